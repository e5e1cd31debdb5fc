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
#: the 48 px field (the whole field kept), None plans a 64 px canvas that holds it. Both hold
#: canvas padding, so both were re-pinned when padding became the plan's value (0 for MRI)
#: instead of each volume's minimum; that change touched only the padded pixels.
BEFORE = {
    32: ("93db3c892da193578f5ac36366a4e6f2a3412f0613f55180d02bd5fcefe01ba6",
         "d689d47dfcae47c8d02ac8c9f10f7604a49d596eaa433593798fd40b28bbcac2"),
    None: ("eebee98279e569f66305a23cfe07fd00e05129fea4d72edc45b569e605f15121",
           "469d2b1a3264575264884e452e44a5d68051b00b1d7eb3d910a53195e12a01b6"),
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
