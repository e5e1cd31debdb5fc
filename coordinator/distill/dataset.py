"""Proxy slices paired with cached teacher outputs, augmented jointly."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from common.data.augment import VALID_THRESHOLD, JointAugment
from common.data.native import extent_mask, whole_extents
from common.data.plan import Plan
from common.data.slices import SliceDataset
from common.kd.functional import unit_maps
from common.kd.targets import TeacherTargets
from common.protocol import slice_hash
from common.teacher_fields import AT_FIELDS, FIELD_NAMES, GRID_FIELDS, SCALAR_FIELDS
from coordinator.distill.cache import Targets, read_rows
from coordinator.distill.proxy import ProxySet

# (images (n,1,S,S), masks (n,S,S), slice ids[, extents (n,4)]): one part of a spilled proxy set
SlicePart = tuple[Any, ...]


class DistillDataset(Dataset):
    """Item ``i``: a proxy slice, its label and the J teachers' outputs for it.

    Returned dict: ``image (1,S,S)`` float, ``mask (S,S)`` long, ``valid (S,S)`` float (1 = a
    real pixel; 0 = padding: the plan's canvas around the resampled slice, from
    ``proxy.extents``, when ``canvas_padding``, and what a rotation/shift/distortion brought
    in), ``index`` int and, when
    targets are given, ``logits (J,K,S,S)``, ``at_early (J,h0,w0)``, ``at_deep (J,h1,w1)``,
    ``rc_early (J,)``, ``rc_deep (J,)``. Geometric augmentation moves the image, the label,
    every teacher map and the validity map together (zero-filled borders); pixels where
    the warped validity is below 0.999 are invalid (KDLoss leaves them out of KL and AT).
    Photometric augmentation touches the image only. ``targets`` may live in memory
    (:class:`TeacherTargets`) or in the on-disk cache (:class:`CachedTargets`): then item ``i``
    reads only row ``i`` of each site's files (and of a memmapped proxy set), so memory does not
    grow with the number of slices or sites. Both give identical items. RC scalars stay as
    cached from the un-augmented slice: prototype pooling ignores pixel positions, so this is an
    approximation exact up to the network's equivariance (tests/common/test_kd_terms.py).

    The rows of a set's ``crop_sources`` (a site's training split: the ``local_only`` and
    ``pooled`` rows, no teacher targets) come from the same sampler as site teacher training
    (:meth:`common.data.slices.SliceDataset.window` of the source's volumes at the row's place
    in them, ``crop_seed``): a whole-field crop, with its own validity extent, when the field is
    wider than the canvas, fresh each epoch (:meth:`set_epoch`); the stored slice when it
    fits.
    """

    def __init__(
        self, proxy: ProxySet, targets: Targets | None,
        augment: JointAugment | None = None, renormalise_at: bool = True,
        canvas_padding: bool = True, crop_seed: int = 0,
    ) -> None:
        self.proxy, self.targets, self.augment = proxy, targets, augment
        self.renormalise_at, self.canvas_padding = renormalise_at, canvas_padding
        self.crops = [(first, SliceDataset(vols, crop_seed=crop_seed))
                      for first, vols in proxy.crop_sources if any(v.wide for v in vols)]
        if self.crops and targets is not None:
            raise ValueError("whole-field crops carry no teacher targets (a proxy set has "
                             "no crop sources)")

    def set_epoch(self, epoch: int) -> None:
        """Draw the whole-field crops for ``epoch`` (no effect without wide volumes)."""
        for _, crops in self.crops:
            crops.set_epoch(epoch)

    def _window(self, i: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]] | None:
        """Row ``i``'s whole-field sampler window, or None when the row is a stored slice."""
        for first, crops in self.crops:
            if first <= i < first + len(crops):
                return crops.window(i - first)
        return None

    def __len__(self) -> int:
        return len(self.proxy)

    def _raw(self, i: int) -> dict[str, Any]:
        """Slice ``i`` of every teacher field: maps ``(J, ...)`` numpy, RC ``(J,)`` tensors."""
        assert self.targets is not None
        out: dict[str, Any] = {n: v[:, 0] for n, v in self.targets.rows(i, i + 1).items()}
        return {**out, **{n: torch.from_numpy(out[n].copy()) for n in SCALAR_FIELDS}}

    def _maps(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        j, k = raw["logits"].shape[:2]
        return {"logits": raw["logits"].reshape(j * k, *raw["logits"].shape[-2:]),
                "at_early": raw["at_early"], "at_deep": raw["at_deep"]}

    def __getitem__(self, i: int) -> dict[str, Any]:
        window = self._window(i)
        if window is not None:
            img, mask, box = window
            real = extent_mask(box, (int(img.shape[0]), int(img.shape[1])))
        else:
            img = read_rows(self.proxy.images, i, i + 1)[0, 0]
            mask = read_rows(self.proxy.masks, i, i + 1)[0]
            real = self.proxy.real_pixels(i)
        raw = self._raw(i) if self.targets is not None else {}
        maps = self._maps(raw) if raw else {}
        maps["valid"] = real if self.canvas_padding else np.ones(img.shape, np.float32)
        if self.augment is not None:
            img, mask, aug_maps = self.augment(img, mask, maps)
            maps = aug_maps or {}
        valid = (maps.pop("valid") >= VALID_THRESHOLD).astype(np.float32)
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None],
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
            "valid": torch.from_numpy(valid),
            "index": i,
        }
        if raw:
            item.update(self._teacher_item(raw, maps))
        return item

    def _teacher_item(self, raw: dict[str, Any], maps: dict[str, np.ndarray]
                      ) -> dict[str, torch.Tensor]:
        j, k = raw["logits"].shape[:2]
        out = {key: torch.from_numpy(np.ascontiguousarray(maps[key], dtype=np.float32))
               for key in GRID_FIELDS}
        out["logits"] = out["logits"].reshape(j, k, *out["logits"].shape[-2:])
        if self.renormalise_at:  # fp16 rounding and rotations' zero-padding change the norm
            for key in AT_FIELDS:
                out[key] = unit_maps(out[key])
        return {**out, **{n: raw[n] for n in SCALAR_FIELDS}}


def batch_targets(batch: dict[str, torch.Tensor], device: torch.device) -> TeacherTargets:
    """Collated ``(B, J, ...)`` teacher fields -> TeacherTargets ``(J, B, ...)`` on ``device``."""
    return TeacherTargets(**{n: batch[n].transpose(0, 1).contiguous().to(device)
                             for n in FIELD_NAMES})


def spill_slices(folder: Path, parts: Iterable[SlicePart], plan: Plan | None = None) -> ProxySet:
    """A :class:`ProxySet` whose ``images (N,1,S,S)`` float32 and ``masks (N,S,S)`` uint8 live
    in ``folder/{images,masks}.npy`` (read-only memmaps, read per item by
    :class:`DistillDataset`), written from ``parts`` (consecutive ``(images, masks, slice ids)``
    or ``(images, masks, slice ids, extents (n, 4))``) so that only one part is ever in memory.
    Hashes and extents as :func:`proxy_from_volumes`'s (extents stay in memory: 16 B a slice)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    hashes: list[str] = []
    boxes: list[np.ndarray] = []
    shapes: dict[str, tuple[int, ...]] = {}
    with (folder / "images.raw").open("wb") as fi, (folder / "masks.raw").open("wb") as fm:
        for imgs, msks, part_ids, *extra in parts:
            imgs32 = np.ascontiguousarray(imgs, np.float32)
            m8 = np.ascontiguousarray(msks, np.uint8)
            fi.write(imgs32.tobytes())
            fm.write(m8.tobytes())
            shapes = {"images": imgs32.shape[1:], "masks": m8.shape[1:]}
            ids += part_ids
            hashes += [slice_hash(i) for i in imgs32]
            hw = (int(imgs32.shape[-2]), int(imgs32.shape[-1]))
            boxes.append(np.asarray(extra[0], np.int32) if extra
                         else whole_extents(len(imgs32), hw))
    arrays = {n: _raw_to_npy(folder / n, np.dtype(np.float32 if n == "images" else np.uint8),
                             (len(ids), *shapes[n])) for n in ("images", "masks")}
    extents = np.concatenate(boxes) if boxes else None
    return ProxySet(arrays["images"], arrays["masks"], ids, hashes, plan, extents)



def _raw_to_npy(stem: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """``stem.raw`` (bare C-ordered bytes) -> ``stem.npy`` (header + bytes, streamed copy),
    opened as a read-only memmap."""
    raw, npy = stem.with_suffix(".raw"), stem.with_suffix(".npy")
    tmp = stem.with_suffix(f".npy.tmp-{os.getpid()}")
    with tmp.open("wb") as out, raw.open("rb") as src:
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                   "fortran_order": False, "shape": shape})
        shutil.copyfileobj(src, out, 1 << 22)
    raw.unlink()
    os.replace(tmp, npy)  # a new file: maps of an earlier load stay valid
    return np.load(npy, mmap_mode="r")


def load_proxy_on_disk(root: Path, size: int | None, label: str | None, folder: Path,
                       fill: bool = False) -> ProxySet:
    """:func:`~coordinator.distill.proxy.load_proxy`, one case at a time, spilled to ``folder``
    (:func:`spill_slices`): the same slices, ids, hashes and plan, never all prepared slices in
    memory. Each file is read once (:class:`~common.data.nifti.ReadOnce`): the fingerprint keeps
    the raw files it read, and each case is prepared from its kept files, which are then
    released (so the raw proxy files are held from the fingerprint until their case is spilled).
    """
    from common.data.fingerprint import plan_for_dataset
    from common.data.layout import discover_dataset
    from common.data.nifti import ReadOnce
    from common.data.slices import load_volumes

    info = discover_dataset(root)
    files = ReadOnce()
    plan = plan_for_dataset(info, size, label, fill=fill, read=files.keep)

    def cases() -> Iterator[SlicePart]:
        for case in info.cases:
            vol = load_volumes(info, [case.case_id], plan.size, plan=plan, read=files.take)[0]
            d = vol.image.shape[0]
            yield (vol.image[:, None].astype(np.float32), vol.label.astype(np.uint8),
                   [f"{vol.case_id}:{z}" for z in range(d)], np.tile(vol.extent, (d, 1)))

    return spill_slices(folder, cases(), plan)
