"""The coordinator's public proxy set, flattened into slices with content hashes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.layout import discover_dataset
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
    """

    images: np.ndarray
    masks: np.ndarray
    slice_ids: list[str]
    hashes: list[str]
    plan: Plan | None = None

    @property
    def digest(self) -> str:
        """One hash for the whole proxy set (order-sensitive), used as the cache key."""
        h = hashlib.sha256()
        for s in self.hashes:
            h.update(s.encode())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.slice_ids)


def proxy_from_volumes(vols: list[Volume], drop_empty: bool = False,
                       plan: Plan | None = None) -> ProxySet:
    """Flatten volumes to slices; ``drop_empty`` removes organ-free slices."""
    imgs, masks, ids = [], [], []
    for vol in vols:
        for z in range(vol.image.shape[0]):
            if drop_empty and not vol.label[z].any():
                continue
            imgs.append(vol.image[z][None])
            masks.append(vol.label[z])
            ids.append(f"{vol.case_id}:{z}")
    images = np.stack(imgs).astype(np.float32)
    return ProxySet(images, np.stack(masks).astype(np.uint8), ids,
                    [slice_hash(i) for i in images], plan)


def load_proxy(root: Path, size: int | None, label: str | None = None) -> ProxySet:
    """Load every case of the proxy dataset at ``root`` through the same planning as a site.

    The plan comes from the proxy's own fingerprint (median in-plane spacing, normalisation,
    target ``label``: name, value, ``"1,2"`` or ``"all"``) at network side ``size`` (None: the
    plan's default, capped at 384); it is kept in ``ProxySet.plan``.
    """
    from common.data.fingerprint import plan_for_dataset

    info = discover_dataset(root)
    plan = plan_for_dataset(info, size, label)
    return proxy_from_volumes(load_volumes(info, None, plan.size, plan=plan), plan=plan)
