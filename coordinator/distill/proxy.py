"""The coordinator's public proxy set, flattened into slices with content hashes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.layout import discover_dataset
from common.data.slices import Volume, load_volumes


@dataclass
class ProxySet:
    """Proxy slices kept in memory.

    Attributes:
        images: ``(N, 1, S, S)`` float32 normalised slices.
        masks: ``(N, S, S)`` uint8 binary labels (public data: labels may be shared).
        slice_ids: ``N`` strings ``"<case>:<z>"``.
        hashes: ``N`` sha256 hex digests of each slice's image bytes.
    """

    images: np.ndarray
    masks: np.ndarray
    slice_ids: list[str]
    hashes: list[str]

    @property
    def digest(self) -> str:
        """One hash for the whole proxy set (order-sensitive), used as the cache key."""
        h = hashlib.sha256()
        for s in self.hashes:
            h.update(s.encode())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.slice_ids)


def slice_hash(image: np.ndarray) -> str:
    """sha256 of one slice's float32 bytes (C order)."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()


def proxy_from_volumes(vols: list[Volume], drop_empty: bool = False) -> ProxySet:
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
    return ProxySet(images, np.stack(masks).astype(np.uint8), ids, [slice_hash(i) for i in images])


def load_proxy(root: Path, size: int) -> ProxySet:
    """Load every case of the proxy dataset at ``root`` resized to ``size``."""
    info = discover_dataset(root)
    return proxy_from_volumes(load_volumes(info, None, size))
