"""The coordinator's public proxy set, flattened into slices with content hashes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.data.layout import discover_dataset
from common.data.native import extent_mask
from common.data.plan import Plan
from common.data.slices import Volume, load_volumes
from common.protocol import slice_hash


@dataclass
class ProxySet:
    """Proxy slices kept in memory.

    Attributes:
        images: ``(N, 1, S, S)`` float32 normalised slices.
        masks: ``(N, S, S)`` uint8 binary labels (public data: labels may be shared).
        slice_ids: ``N`` strings ``"<case>:<z>"``.
        hashes: ``N`` sha256 hex digests of each slice's image bytes.
        plan: the preprocessing plan the slices were prepared with (the student's plan:
            exported with the student so predicting reuses it); None for in-memory sets.
        extents: ``(N, 4)`` int32 ``(y0, y1, x0, x1)``: where each slice's real pixels lie in
            its ``S x S`` canvas (outside: the plan's padding); None = the whole canvas.
        crop_sources: ``(first row, volumes)`` pairs: rows ``first .. first + n - 1`` are the
            ``n`` slices of ``volumes`` (volume then z order; a site's training split with a
            field wider than the canvas, :mod:`coordinator.baselines.data`). Training on the set
            draws those rows as whole-field crops, as site teacher training does (``images``
            keep the centre crops). Empty: train on ``images``.
    """

    images: np.ndarray
    masks: np.ndarray
    slice_ids: list[str]
    hashes: list[str]
    plan: Plan | None = None
    extents: np.ndarray | None = None
    crop_sources: list[tuple[int, list[Volume]]] = field(default_factory=list)

    def real_pixels(self, i: int) -> np.ndarray:
        """``(S, S)`` float32: 1 on slice ``i``'s real pixels, 0 on the canvas padding."""
        hw = (int(self.images.shape[-2]), int(self.images.shape[-1]))
        return extent_mask(None if self.extents is None else self.extents[i], hw)

    @property
    def digest(self) -> str:
        """One hash for the whole proxy set (order-sensitive), used as the cache key (a set
        trained on whole-field crops, :attr:`crop_sources`, hashes differently from its centre
        crops)."""
        h = hashlib.sha256()
        for s in self.hashes:
            h.update(s.encode())
        if any(v.wide for _, vols in self.crop_sources for v in vols):
            h.update(b"whole-field crops")
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.slice_ids)

    def real_fraction(self) -> float:
        """Mean fraction of the ``S x S`` canvas that real pixels cover (1.0 without extents)."""
        if self.extents is None or len(self) == 0:
            return 1.0
        e = np.asarray(self.extents, np.float64)
        area = (e[:, 1] - e[:, 0]) * (e[:, 3] - e[:, 2])
        return float(area.mean() / (self.images.shape[-2] * self.images.shape[-1]))


PADDED_CANVAS = 0.5  # warn when padding is more than half of the student's canvas


def canvas_note(proxy: ProxySet, excluded: bool = True) -> str | None:
    """A one-line warning when padding fills more than :data:`PADDED_CANVAS` of the student's
    canvas (a ``size`` larger than the slices at the plan's spacing), naming the size that holds
    the same slices and the compute it would save; None otherwise. ``excluded``: whether the
    loss leaves padding out (``[kd] padding = "exclude"``)."""
    real = proxy.real_fraction()
    if real >= 1.0 - PADDED_CANVAS or proxy.extents is None:
        return None
    s = proxy.images.shape[-1]
    e = np.asarray(proxy.extents)
    side = int(np.median(np.maximum(e[:, 1] - e[:, 0], e[:, 3] - e[:, 2])))
    fit = min(s, -(-side // 32) * 32)
    loss = "left out of the loss" if excluded else "counted in the loss"
    return (f"student canvas {s} px is {100 * (1 - real):.0f} % padding (median slice {side} px "
            f"at the plan's spacing): padding is {loss} ([kd] padding), but a size of {fit} "
            f"holds the same slices with {(s / fit) ** 2:.1f}x fewer pixels "
            f"([student] spacing_rule = \"fill\" upsamples them instead)")


def proxy_from_volumes(vols: list[Volume], drop_empty: bool = False,
                       plan: Plan | None = None) -> ProxySet:
    """Flatten volumes to slices; ``drop_empty`` removes organ-free slices."""
    imgs, masks, ids, boxes = [], [], [], []
    for vol in vols:
        for z in range(vol.image.shape[0]):
            if drop_empty and not vol.label[z].any():
                continue
            imgs.append(vol.image[z][None])
            masks.append(vol.label[z])
            ids.append(f"{vol.case_id}:{z}")
            boxes.append(vol.extent)
    images = np.stack(imgs).astype(np.float32)
    return ProxySet(images, np.stack(masks).astype(np.uint8), ids,
                    [slice_hash(i) for i in images], plan, np.asarray(boxes, np.int32))


def load_proxy(root: Path, size: int | None, label: str | None = None,
               fill: bool = False) -> ProxySet:
    """Load every case of the proxy dataset at ``root`` through the same planning as a site.

    The plan comes from the proxy's own fingerprint (median in-plane spacing, normalisation,
    target ``label``: name, value, ``"1,2"`` or ``"all"``) at network side ``size`` (None: the
    plan's default, capped at 384; ``fill``: the median field of view fills ``size``, see
    :func:`common.data.plan.plan_from_fingerprint`); it is kept in ``ProxySet.plan``.
    """
    from common.data.fingerprint import plan_for_dataset
    from common.data.nifti import ReadOnce

    info = discover_dataset(root)
    files = ReadOnce()  # each file read once: the fingerprint's reads prepare the cases
    plan = plan_for_dataset(info, size, label, fill=fill, read=files.keep)
    return proxy_from_volumes(load_volumes(info, None, plan.size, plan=plan, read=files.take),
                              plan=plan)
