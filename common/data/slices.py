"""Volumes loaded into memory and a 2D slice dataset over them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from common.data.errors import data_error
from common.data.layout import CaseRef, DatasetInfo
from common.data.nifti import load_nifti
from common.data.preprocess import (
    binarise_mask,
    check_pair,
    normalise_volume,
    resize_mask,
    resize_slice,
)

AugmentFn = Callable[..., tuple[np.ndarray, np.ndarray, Any]]
_SPACING_TOL = 1e-3


@dataclass
class Volume:
    """One preprocessed case.

    ``image``: (D, S, S) float32 normalised and resized; ``label``: (D, S, S) uint8 in {0, 1};
    ``spacing``: (sz, sy, sx) mm after the in-plane resize (sy * H / S, sx * W / S).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]


def load_volume(ref: CaseRef, modality: str, size: int) -> Volume:
    """Load, validate, normalise and resize one case to (D, size, size).

    Raises DataError when the label is missing, or image and label differ in shape or in
    spacing by more than 1e-3 mm (the message names both files).
    """
    if ref.label is None:
        raise data_error(ref.image, "case has no label")
    image, sp_img = load_nifti(ref.image, first_channel=True)
    label, sp_lab = load_nifti(ref.label)
    check_pair(image, label, ref.image, ref.label)
    if max(abs(a - b) for a, b in zip(sp_img, sp_lab, strict=True)) > _SPACING_TOL:
        raise data_error(
            ref.image, f"image spacing {sp_img} != label spacing {sp_lab} (label {ref.label})"
        )
    norm = normalise_volume(image, modality)
    mask = binarise_mask(label)
    img_out = np.stack([resize_slice(s, size) for s in norm]).astype(np.float32)
    lab_out = np.stack([resize_mask(s, size) for s in mask]).astype(np.uint8)
    _, h, w = image.shape
    spacing = (sp_img[0], sp_img[1] * h / size, sp_img[2] * w / size)
    return Volume(ref.case_id, img_out, lab_out, spacing)


def load_volumes(info: DatasetInfo, case_ids: list[str] | None, size: int) -> list[Volume]:
    """Load the cases ``case_ids`` (all when None), in the given order, at (size, size)."""
    refs = {c.case_id: c for c in info.cases}
    ids = list(refs) if case_ids is None else case_ids
    missing = [c for c in ids if c not in refs]
    if missing:
        raise data_error(info.name, f"unknown case ids {missing}")
    return [load_volume(refs[c], info.modality, size) for c in ids]


class SliceDataset(Dataset[dict[str, Any]]):
    """Axial slices of in-memory volumes.

    Item: ``{"image": FloatTensor (1, S, S), "mask": LongTensor (S, S) in {0, 1}, "case": str,
    "z": int, "index": int}``. ``augment(image (S, S) float32, mask (S, S) uint8, None)`` is
    applied to numpy arrays before tensor conversion. ``skip_empty_fraction`` drops that
    fraction of organ-free slices, chosen deterministically from ``seed``.
    """

    def __init__(
        self,
        volumes: list[Volume],
        augment: AugmentFn | None = None,
        skip_empty_fraction: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= skip_empty_fraction <= 1.0:
            raise ValueError("skip_empty_fraction must be in [0, 1]")
        self.volumes = volumes
        self.augment = augment
        self.index = _slice_index(volumes, skip_empty_fraction, seed)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, z = self.index[i]
        vol = self.volumes[v]
        img, mask = vol.image[z], vol.label[z]
        if self.augment is not None:
            img, mask, _ = self.augment(img, mask, None)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img, np.float32))[None],
            "mask": torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)),
            "case": vol.case_id,
            "z": int(z),
            "index": int(i),
        }


def _slice_index(volumes: list[Volume], skip_frac: float, seed: int) -> list[tuple[int, int]]:
    """(volume index, z) of every kept slice, in volume then z order."""
    pairs = [(v, z) for v, vol in enumerate(volumes) for z in range(vol.image.shape[0])]
    empty = [k for k, (v, z) in enumerate(pairs) if not volumes[v].label[z].any()]
    n_drop = int(round(skip_frac * len(empty)))
    drop = set(np.random.default_rng(seed).permutation(empty)[:n_drop].tolist()) if empty else set()
    return [p for k, p in enumerate(pairs) if k not in drop]
