"""Volumes loaded into memory and a 2D slice dataset over them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from common.data.errors import data_error
from common.data.geometry import check_pair_headers
from common.data.labels import ALL, foreground, resolve_target
from common.data.layout import CaseRef, DatasetInfo
from common.data.native import PreparedCase, load_native_label, prepare_label, prepare_loaded
from common.data.nifti import read_nifti
from common.data.plan import Plan, default_plan

AugmentFn = Callable[..., tuple[np.ndarray, np.ndarray, Any]]


@dataclass
class Volume:
    """One preprocessed case.

    ``image``: (D, S, S) float32 normalised and resampled (:mod:`common.data.native`);
    ``label``: (D, S, S) uint8 in {0, 1} on the same grid; ``spacing``: (sz, sy, sx) mm of that
    grid. ``case``: how to map a prediction back to the file's native grid; ``native_label``:
    the untouched (X, Y, Z) target mask in the label file's own orientation (uint8 {0, 1}).
    Both are None for volumes built in memory (then scores are taken on the prepared grid).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    case: PreparedCase | None = None
    native_label: np.ndarray | None = None

    @property
    def extent(self) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of the real pixels in each ``(S, S)`` slice (the rest is the
        plan's canvas padding); the whole slice for volumes built in memory."""
        if self.case is None:
            return 0, int(self.image.shape[1]), 0, int(self.image.shape[2])
        return self.case.extent


def load_volume(ref: CaseRef, modality: str, size: int, *, plan: Plan | None = None,
                declared: list[int] | None = None) -> Volume:
    """Load, geometry-check, select the target label, normalise and resample one case.

    ``plan`` (default: :func:`common.data.plan.default_plan` of ``modality`` / ``size``) decides
    spacing, size, normalisation and target labels (:mod:`common.data.labels`); when given,
    ``size`` is ignored. ``declared``: the dataset's declared foreground values (others are
    refused). Both files' headers are compared before any voxel is read. Raises DataError
    when the label is missing, its geometry differs from the image's (one line naming both
    files), it holds undeclared values, or it is multi-valued without a target choice.
    """
    if ref.label is None:
        raise data_error(ref.image, "case has no label")
    plan = plan or default_plan(modality, size)
    check_pair_headers(ref.image, ref.label)
    image = read_nifti(ref.image, first_channel=True)
    native_label = load_native_label(ref.label, image, plan.labels, union=is_union(plan),
                                     declared=declared)
    case = prepare_loaded(image, plan)
    label = prepare_label(native_label, case)
    return Volume(ref.case_id, case.image, label, case.spacing, case, native_label)


def is_union(plan: Plan) -> bool:
    """Whether ``plan`` targets every non-zero value (``--label all`` on undeclared data)."""
    return plan.labels is None and plan.label_name == ALL


def declared_values(info: DatasetInfo) -> list[int] | None:
    """The foreground values ``info`` declares (None when it declares none: no check)."""
    return sorted(foreground(info.labels)) or None


def load_volumes(info: DatasetInfo, case_ids: list[str] | None, size: int, *,
                 plan: Plan | None = None, label: str | None = None) -> list[Volume]:
    """Load the cases ``case_ids`` (all when None), in the given order.

    ``plan``: the preprocessing plan (e.g. from ``teacher.json`` or the fingerprint); default
    :func:`common.data.plan.default_plan` at ``size`` with the target from ``label`` (name,
    value, ``"1,2"`` or ``"all"``; default the single declared foreground label).
    """
    refs = {c.case_id: c for c in info.cases}
    ids = list(refs) if case_ids is None else case_ids
    missing = [c for c in ids if c not in refs]
    if missing:
        raise data_error(info.name, f"unknown case ids {missing}")
    if plan is None:
        values, name = resolve_target(info.labels, label, info.name)
        plan = default_plan(info.modality, size, values).model_copy(update={"label_name": name})
    declared = declared_values(info)
    return [load_volume(refs[c], info.modality, size, plan=plan, declared=declared)
            for c in ids]


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
