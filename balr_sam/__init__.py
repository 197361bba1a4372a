"""BALR-SAM: Boundary-Aware Low-Rank adaptation of the Segment Anything Model (arXiv 2509.24204).

The package provides the network (:mod:`balr_sam.networks`), MONAI transforms and data
preparation, metrics, Ignite handlers and the ``balr-sam`` command line.
"""

__version__ = "0.1.0"
