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
from common.data.labels import declared_values, is_union, resolve_target
from common.data.layout import CaseRef, DatasetInfo
from common.data.native import (
    PreparedCase,
    load_native_label,
    prepare_label,
    prepare_label_whole,
    prepare_loaded,
)
from common.data.nifti import Reader, read_nifti
from common.data.plan import Plan, default_plan

AugmentFn = Callable[..., tuple[np.ndarray, np.ndarray, Any]]
#: Chance that a training crop of a field wider than the canvas is centred on a foreground
#: pixel of its slice (nnU-Net's foreground oversampling); otherwise it is placed uniformly.
FOREGROUND_OVERSAMPLE = 1 / 3


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

    @property
    def wide(self) -> bool:
        """Whether the field of view is wider than the canvas (``image`` is its centre crop)."""
        return self.case is not None and self.case.whole is not None \
            and self.native_label is not None

    @property
    def whole_label(self) -> np.ndarray:
        """(D, GH, GW) uint8 label on the whole field (the grid of
        :attr:`~common.data.native.PreparedCase.whole_image`); ``label`` when the field fits."""
        if not self.wide:
            return self.label
        assert self.case is not None and self.native_label is not None
        return prepare_label_whole(self.native_label, self.case)


def load_volume(ref: CaseRef, modality: str, size: int, *, plan: Plan | None = None,
                declared: list[int] | None = None, read: Reader = read_nifti) -> Volume:
    """Load, geometry-check, select the target label, normalise and resample one case.

    ``plan`` (default: :func:`common.data.plan.default_plan` of ``modality`` / ``size``) decides
    spacing, size, normalisation and target labels (:mod:`common.data.labels`); when given,
    ``size`` is ignored. ``declared``: the dataset's declared foreground values (others are
    refused). Both files' headers are compared before any voxel is read. Raises DataError
    when the label is missing, its geometry differs from the image's (one line naming both
    files), it holds undeclared values, or it is multi-valued without a target choice.
    ``read``: how both files are read (a :class:`~common.data.nifti.ReadOnce` hands out the
    files its run already read).
    """
    if ref.label is None:
        raise data_error(ref.image, "case has no label")
    plan = plan or default_plan(modality, size)
    check_pair_headers(ref.image, ref.label)
    image = read(ref.image, first_channel=True)
    native_label = load_native_label(ref.label, image, plan.labels,
                                     union=is_union(plan.labels, plan.label_name),
                                     declared=declared, read=read)
    case = prepare_loaded(image, plan)
    label = prepare_label(native_label, case)
    return Volume(ref.case_id, case.image, label, case.spacing, case, native_label)


def load_volumes(info: DatasetInfo, case_ids: list[str] | None, size: int, *,
                 plan: Plan | None = None, label: str | None = None,
                 read: Reader = read_nifti) -> list[Volume]:
    """Load the cases ``case_ids`` (all when None), in the given order (``read``: see
    :func:`load_volume`).

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
    declared = declared_values(info.labels)
    return [load_volume(refs[c], info.modality, size, plan=plan, declared=declared, read=read)
            for c in ids]


class SliceDataset(Dataset[dict[str, Any]]):
    """Axial slices of in-memory volumes.

    Item: ``{"image": FloatTensor (1, S, S), "mask": LongTensor (S, S) in {0, 1}, "case": str,
    "z": int, "index": int}``. ``augment(image (S, S) float32, mask (S, S) uint8, None)`` is
    applied to numpy arrays before tensor conversion. ``skip_empty_fraction`` drops that
    fraction of organ-free slices, chosen deterministically from ``seed``.

    A slice that fits the canvas is the volume's own ``(S, S)`` slice. A slice of a field wider
    than the canvas (:attr:`Volume.wide`) is an ``S x S`` crop of the whole field
    (:attr:`Volume.whole_label`, ``PreparedCase.whole_image``), drawn afresh per item and epoch
    (:meth:`set_epoch`), deterministic given ``crop_seed`` (default ``seed``): with chance
    ``foreground_oversample`` centred on a random foreground pixel of the slice (clipped to the
    field), else uniformly placed; so every part of the field is trained on, not only the
    centre. Organ-free slices are judged on the whole field.
    """

    def __init__(
        self,
        volumes: list[Volume],
        augment: AugmentFn | None = None,
        skip_empty_fraction: float = 0.0,
        seed: int = 0,
        crop_seed: int | None = None,
        foreground_oversample: float = FOREGROUND_OVERSAMPLE,
    ) -> None:
        if not 0.0 <= skip_empty_fraction <= 1.0:
            raise ValueError("skip_empty_fraction must be in [0, 1]")
        self.volumes = volumes
        self.augment = augment
        self.crop_seed = seed if crop_seed is None else crop_seed
        self.foreground_oversample = foreground_oversample
        self.epoch = 0
        self.whole = {v: (vol.case.whole_image, vol.whole_label)
                      for v, vol in enumerate(volumes) if vol.wide and vol.case is not None}
        labels = [self.whole[v][1] if v in self.whole else vol.label
                  for v, vol in enumerate(volumes)]
        self.index = _slice_index(labels, skip_empty_fraction, seed)

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops of wide fields for ``epoch`` (call before iterating it)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def _slice(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(S, S) image and label of item ``i`` (a crop of the whole field when wide)."""
        image, label, _ = self.window(i)
        return image, label

    def window(self, i: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
        """Item ``i``'s (S, S) image and label (a crop of the whole field when wide, drawn for
        the current epoch) and ``(y0, y1, x0, x1)``: where its real pixels lie in it (the rest
        is padding; :attr:`Volume.extent` for a slice that fits the canvas)."""
        v, z = self.index[i]
        vol = self.volumes[v]
        if v not in self.whole:
            return vol.image[z], vol.label[z], vol.extent
        image, label = self.whole[v]
        s = int(vol.image.shape[-1])
        rng = np.random.default_rng((self.crop_seed, self.epoch, i))
        y, x = crop_origin(label[z], s, rng, self.foreground_oversample)
        assert vol.case is not None
        (oy, ox), (h, w) = vol.case.whole_offset, vol.case.resampled_hw
        real = (min(max(oy - y, 0), s), min(max(oy + h - y, 0), s),
                min(max(ox - x, 0), s), min(max(ox + w - x, 0), s))
        return image[z, y:y + s, x:x + s], label[z, y:y + s, x:x + s], real

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, z = self.index[i]
        vol = self.volumes[v]
        img, mask = self._slice(i)
        if self.augment is not None:
            img, mask, _ = self.augment(img, mask, None)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img, np.float32))[None],
            "mask": torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)),
            "case": vol.case_id,
            "z": int(z),
            "index": int(i),
        }


def crop_origin(label: np.ndarray, size: int, rng: np.random.Generator,
                foreground: float) -> tuple[int, int]:
    """``(y0, x0)`` of a ``size`` x ``size`` crop inside the ``(GH, GW)`` slice ``label``
    (GH, GW >= size): with chance ``foreground`` centred on a random foreground pixel (clipped
    to the slice), else uniform."""
    gh, gw = label.shape
    pick_fg = rng.random() < foreground
    fg = np.argwhere(label) if pick_fg else np.empty((0, 2), int)
    if len(fg):
        cy, cx = fg[int(rng.integers(len(fg)))]
        return (int(np.clip(cy - size // 2, 0, gh - size)),
                int(np.clip(cx - size // 2, 0, gw - size)))
    return int(rng.integers(0, gh - size + 1)), int(rng.integers(0, gw - size + 1))


def _slice_index(labels: list[np.ndarray], skip_frac: float, seed: int
                 ) -> list[tuple[int, int]]:
    """(volume index, z) of every kept slice of the (D, H, W) ``labels``, in volume then z
    order."""
    pairs = [(v, z) for v, lab in enumerate(labels) for z in range(lab.shape[0])]
    empty = [k for k, (v, z) in enumerate(pairs) if not labels[v][z].any()]
    n_drop = int(round(skip_frac * len(empty)))
    drop = set(np.random.default_rng(seed).permutation(empty)[:n_drop].tolist()) if empty else set()
    return [p for k, p in enumerate(pairs) if k not in drop]
