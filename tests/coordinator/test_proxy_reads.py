"""The coordinator reads each proxy file once (fingerprint -> plan -> every case prepared from
the file the fingerprint read), with the proxy arrays unchanged from the read-twice path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from common.data.phantom import make_proxy
from tests._helpers import count_nifti_reads

#: sha256 of ``images``, ``masks`` and ``extents`` bytes (in that order) and ``ProxySet.digest``
#: of this proxy as the former path (every file read twice) loaded it, by canvas size: 32 crops
#: the 48 px field (the whole field kept), None plans a 64 px canvas that holds it.
BEFORE = {
    32: ("e03cbf8c30b33c5d81c912e267f1161a9d2884b81c040aae0f822aecbf8adb4c",
         "a13b41fab81e5287d18b5ecb078092cb33f10e0c4f11ac69a4633b6b3a994fcc"),
    None: ("6cf1554e2c7a0b2ae500e687e67c3e3e148323bdce63d852c85e694b9131de9d",
           "be0493cfa66ed39d611b80fceea048e49232c29050c8a9f7a6247ebab45f5fd8"),
}


def _arrays_digest(images: np.ndarray, masks: np.ndarray, extents: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in (images, masks, extents):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("size", [32, None])
def test_proxy_loading_reads_each_file_once_with_unchanged_arrays(
        size: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from coordinator.distill.dataset import load_proxy_on_disk
    from coordinator.distill.proxy import load_proxy

    root = make_proxy(tmp_path / "proxy", n_cases=3, seed=500, shape=(8, 48, 48))
    files = sorted(root.glob("imagesTr/*.nii*")) + sorted(root.glob("labelsTr/*.nii*"))
    assert len(files) == 6
    counts = count_nifti_reads(monkeypatch)
    disk = load_proxy_on_disk(root, size, None, tmp_path / "spill")
    assert dict(counts) == {f: 1 for f in files}
    assert disk.images.shape == (24, 1, 32 if size else 64, 32 if size else 64)
    got = (_arrays_digest(np.asarray(disk.images), np.asarray(disk.masks), disk.extents),
           disk.digest)
    assert got == BEFORE[size]
    counts.clear()
    ram = load_proxy(root, size)  # the in-memory loader: same reads, same arrays
    assert dict(counts) == {f: 1 for f in files}
    assert (_arrays_digest(ram.images, ram.masks, ram.extents), ram.digest) == BEFORE[size]
