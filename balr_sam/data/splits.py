"""Official dataset splits and folder names, and the deterministic fallback split.

- Synapse (BTCV): TransUNet's split of the 30 labelled training cases into 18 training and 12
  test cases (used by TransUNet, Swin-Unet, SAMed, H-SAM...).
- Polyp: PraNet's protocol: ``TrainDataset`` (Kvasir 900 + CVC-ClinicDB 550) and five test sets.
- ISIC 2017: the challenge's official training/validation/test folders.
"""

from __future__ import annotations

import random
from typing import Dict, List, Sequence, Tuple, TypeVar

__all__ = [
    "ISIC2017_FOLDERS",
    "POLYP_TEST_SETS",
    "TRANSUNET_TEST_IDS",
    "TRANSUNET_TRAIN_IDS",
    "fraction_split",
]

#: TransUNet's 12 Synapse test cases (BTCV ``imgXXXX`` numbers).
TRANSUNET_TEST_IDS: Tuple[int, ...] = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
#: TransUNet's 18 Synapse training cases (2,211 axial slices in ``train_npz``).
TRANSUNET_TRAIN_IDS: Tuple[int, ...] = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)

#: PraNet's polyp test sets, folder names under ``TestDataset/``.
POLYP_TEST_SETS: Tuple[str, ...] = ("Kvasir", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "CVC-300")

#: ISIC 2017 Part 1 (lesion segmentation): split -> (image folder, ground-truth folder).
ISIC2017_FOLDERS: Dict[str, Tuple[str, str]] = {
    "training": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
    "validation": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
    "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
}

T = TypeVar("T")


def fraction_split(ids: Sequence[T], val_fraction: float, test_fraction: float, seed: int = 0) -> Dict[str, List[T]]:
    """Deterministic random split of case ids into training/validation/test.

    The ids are sorted, shuffled with ``random.Random(seed)``, then the first
    ``round(n * test_fraction)`` go to test, the next ``round(n * val_fraction)`` (at most what
    is left) to validation and the rest to training. A non-zero fraction gets at least one case
    when ``n >= 3``; at least one case stays in training when the fractions add up to less
    than 1. Test takes precedence: ``test_fraction=1`` puts every case in test. Each returned
    list is sorted.

    Args:
        ids: case identifiers (sortable, unique).
        val_fraction: fraction for validation, in [0, 1].
        test_fraction: fraction for test, in [0, 1].
        seed: shuffling seed.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``.
    """
    for name, value in (("validation", val_fraction), ("test", test_fraction)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} fraction must be in [0, 1], got {value}")
    order = sorted(ids)
    if len(set(order)) != len(order):
        raise ValueError("case ids must be unique")
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test = min(n, int(round(n * test_fraction)) or (1 if test_fraction > 0 and n >= 3 else 0))
    n_val = min(n - n_test, int(round(n * val_fraction)) or (1 if val_fraction > 0 and n >= 3 else 0))
    if val_fraction + test_fraction < 1 and n >= 1:
        while n_test + n_val > n - 1:
            if n_val > 0:
                n_val -= 1
            else:
                n_test -= 1
    return {
        "training": sorted(order[n_test + n_val :]),
        "validation": sorted(order[n_test : n_test + n_val]),
        "test": sorted(order[:n_test]),
    }
