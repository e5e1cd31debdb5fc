"""Data loading, preprocessing, splitting, synthetic phantoms and augmentation.

Importing ``common.data`` is light: only ``errors``, ``layout`` and ``split`` (stdlib + numpy)
load eagerly; names from the nibabel / cv2 / torch / albumentations backed modules are
resolved lazily on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

from common.data.errors import DataError
from common.data.layout import CaseRef, DatasetInfo, discover_dataset
from common.data.split import Split, load_split, save_split, split_cases

_LAZY = {
    "load_nifti": "nifti",
    "save_nifti": "nifti",
    "Plan": "plan",
    "default_plan": "plan",
    "plan_from_fingerprint": "plan",
    "PreparedCase": "native",
    "prepare_image": "native",
    "to_native": "native",
    "save_native_mask": "native",
    "Fingerprint": "fingerprint",
    "compute_fingerprint": "fingerprint",
    "plan_for_dataset": "fingerprint",
    "Volume": "slices",
    "load_volume": "slices",
    "load_volumes": "slices",
    "SliceDataset": "slices",
    "PhantomSpec": "phantom",
    "STYLES": "phantom",
    "make_phantom": "phantom",
    "make_prostate_sites": "phantom",
    "make_proxy": "phantom",
    "AugmentConfig": "augment",
    "JointAugment": "augment",
    "build_augment": "augment",
}

__all__ = [
    "CaseRef",
    "DataError",
    "DatasetInfo",
    "Split",
    "discover_dataset",
    "load_split",
    "save_split",
    "split_cases",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """Import the submodule defining ``name`` on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"common.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'common.data' has no attribute {name!r}")
