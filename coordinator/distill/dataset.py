"""Proxy slices paired with cached teacher outputs, augmented jointly."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from common.data.augment import VALID_THRESHOLD, JointAugment
from common.data.native import whole_extents
from common.data.plan import Plan
from common.kd.targets import TeacherTargets
from common.protocol import slice_hash
from coordinator.distill.cache import CachedTargets, Targets, read_rows
from coordinator.distill.proxy import ProxySet

MAP_KEYS = ("logits", "at_early", "at_deep")
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
    """

    def __init__(
        self, proxy: ProxySet, targets: Targets | None,
        augment: JointAugment | None = None, renormalise_at: bool = True,
        canvas_padding: bool = True,
    ) -> None:
        self.proxy, self.targets, self.augment = proxy, targets, augment
        self.renormalise_at, self.canvas_padding = renormalise_at, canvas_padding

    def __len__(self) -> int:
        return len(self.proxy)

    def _raw(self, i: int) -> dict[str, Any]:
        """Slice ``i`` of every teacher field: maps ``(J, ...)`` numpy, RC ``(J,)`` tensors."""
        t = self.targets
        assert t is not None
        if isinstance(t, CachedTargets):
            rows = t.rows(i, i + 1)
            out: dict[str, Any] = {n: v[:, 0] for n, v in rows.items()}
            return {**out, **{n: torch.from_numpy(out[n].copy()) for n in ("rc_early", "rc_deep")}}
        return {"logits": t.logits[:, i].numpy(), "at_early": t.at_early[:, i].numpy(),
                "at_deep": t.at_deep[:, i].numpy(), "rc_early": t.rc_early[:, i],
                "rc_deep": t.rc_deep[:, i]}

    def _maps(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        j, k = raw["logits"].shape[:2]
        return {"logits": raw["logits"].reshape(j * k, *raw["logits"].shape[-2:]),
                "at_early": raw["at_early"], "at_deep": raw["at_deep"]}

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = read_rows(self.proxy.images, i, i + 1)[0, 0]
        mask = read_rows(self.proxy.masks, i, i + 1)[0]
        raw = self._raw(i) if self.targets is not None else {}
        maps = self._maps(raw) if raw else {}
        maps["valid"] = (self.proxy.real_pixels(i) if self.canvas_padding
                         else np.ones(img.shape, np.float32))
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
               for key in MAP_KEYS}
        out["logits"] = out["logits"].reshape(j, k, *out["logits"].shape[-2:])
        if self.renormalise_at:  # zero-padding by rotations changes the L2 norm
            for key in ("at_early", "at_deep"):
                a = out[key]
                out[key] = F.normalize(a.flatten(1), dim=1).reshape(a.shape)
        out["rc_early"], out["rc_deep"] = raw["rc_early"], raw["rc_deep"]
        return out


def batch_targets(batch: dict[str, torch.Tensor], device: torch.device) -> TeacherTargets:
    """Collated ``(B, J, ...)`` teacher fields -> TeacherTargets ``(J, B, ...)`` on ``device``."""
    names = (*MAP_KEYS, "rc_early", "rc_deep")
    return TeacherTargets(**{n: batch[n].transpose(0, 1).contiguous().to(device) for n in names})


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
    (:func:`spill_slices`): the same slices, ids, hashes and plan, never all in memory."""
    from common.data.fingerprint import plan_for_dataset
    from common.data.layout import discover_dataset
    from common.data.slices import load_volumes

    info = discover_dataset(root)
    plan = plan_for_dataset(info, size, label, fill=fill)

    def cases() -> Iterator[SlicePart]:
        for case in info.cases:
            vol = load_volumes(info, [case.case_id], plan.size, plan=plan)[0]
            d = vol.image.shape[0]
            yield (vol.image[:, None].astype(np.float32), vol.label.astype(np.uint8),
                   [f"{vol.case_id}:{z}" for z in range(d)], np.tile(vol.extent, (d, 1)))

    return spill_slices(folder, cases(), plan)
