"""``balr-sam benchmark``: full fine-tuning vs SAMed-style LoRA vs BALR-SAM (and stock SAM) on one workload.

Same variant, input size, batch, loss (MONAI ``DiceCELoss``) and optimizer (``AdamW``) for every
configuration; every figure comes with its ratio to the baselines measured in the same run.

* :mod:`~balr_sam.benchmark.baselines`: the compared configurations and their inference form;
* :mod:`~balr_sam.benchmark.measurements`: training step, peak training memory (child process),
  decoder attention memory, inference throughput, encoder FLOP/s, Dice + HD95 time, attention
  kernels;
* :mod:`~balr_sam.benchmark.volume`: whole CT volumes through ``balr-sam infer``'s own path
  (``ct_inference_preprocessing`` + ``StreamingVolumeSegmenter`` + ``write_label_nifti``), one
  volume end to end and a batch with and without read-ahead;
* :mod:`~balr_sam.benchmark.targets`: the issue's targets and their status;
* :mod:`~balr_sam.benchmark.table`: the Markdown report;
* :mod:`~balr_sam.benchmark.run`: one run, and the command's action;
* :mod:`~balr_sam.benchmark.timing`: synchronised timing helpers.

``python -m balr_sam.benchmark ARGS`` is ``balr-sam benchmark ARGS`` (and, with
``--child-memory``, the memory measurement's child process).

Import from the submodules: this package imports nothing itself, so that the memory child
process (``python -m balr_sam.benchmark --child-memory``) loads only what it measures.
"""
