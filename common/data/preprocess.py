"""Intensity normalisation, mask binarisation and 2D resizing.

CT normalisation is fixed (no per-volume statistics): HU are clipped to ``ct_window``, scaled to
[0, 1], then standardised with the fixed constants ``CT_MEAN = 0.5`` and ``CT_STD = 0.5``, so the
window maps exactly to [-1, 1] (e.g. with the default (-160, 240) window: -160 HU -> -1,
40 HU -> 0, 240 HU -> +1). MRI has no absolute scale, so each volume is clipped to its own
0.5 / 99.5 percentiles and z-scored.

Legacy helpers: the data pipeline normalises and resamples through
:mod:`common.data.plan` / :mod:`common.data.native` (plan from the dataset fingerprint).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from common.data.errors import data_error

CT_MEAN = 0.5
CT_STD = 0.5
_EPS = 1e-8


def normalise_volume(
    vol: np.ndarray,
    modality: str,
    ct_window: tuple[float, float] = (-160.0, 240.0),
    foreground_only: bool = False,
    mri_percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Normalise a (D, H, W) volume to float32.

    MRI: clip to the volume's ``mri_percentiles``, then z-score over the whole volume
    (``foreground_only``: statistics from nonzero voxels only, robust to zero padding). CT:
    clip to ``ct_window`` HU, scale to [0, 1], then ``(x - CT_MEAN) / CT_STD``. A constant
    MRI volume becomes all zeros.
    """
    v = np.asarray(vol, dtype=np.float32)
    if modality.upper() == "CT":
        lo, hi = ct_window
        scaled = (np.clip(v, lo, hi) - lo) / (hi - lo)
        return ((scaled - CT_MEAN) / CT_STD).astype(np.float32)
    v = np.clip(v, *np.percentile(v, mri_percentiles)).astype(np.float32)
    sample = v[v != 0] if foreground_only and np.any(v) else v
    mean, std = float(sample.mean()), float(sample.std())
    return ((v - mean) / max(std, _EPS)).astype(np.float32)


def binarise_mask(label: np.ndarray) -> np.ndarray:
    """Whole-organ mask: any label > 0 -> 1. Same shape, uint8 in {0, 1}."""
    return (np.asarray(label) > 0).astype(np.uint8)


def resize_slice(img2d: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an (H, W) image to (size, size) float32."""
    img = np.ascontiguousarray(img2d, dtype=np.float32)
    if img.shape == (size, size):
        return img.copy()
    return np.asarray(cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR), np.float32)


def resize_mask(mask2d: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) mask to (size, size) uint8."""
    mask = np.ascontiguousarray(mask2d, dtype=np.uint8)
    if mask.shape == (size, size):
        return mask.copy()
    return np.asarray(cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST), np.uint8)


def check_pair(
    image: np.ndarray, label: np.ndarray, image_path: Path | str, label_path: Path | str
) -> None:
    """Raise DataError (naming both files) when image and label shapes differ."""
    if tuple(image.shape) != tuple(label.shape):
        raise data_error(
            image_path,
            f"image shape {tuple(image.shape)} != label shape {tuple(label.shape)} "
            f"(label {label_path})",
        )
