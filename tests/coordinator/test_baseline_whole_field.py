"""The ``local_only`` and ``pooled`` rows train on whole-field crops of site scans wider than the
canvas (the sampler of site teacher training), and on the stored slices, unchanged, when the
field fits; the proxy part of ``pooled`` stays the proxy's slices."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from coordinator.baselines.data import concat_sets
from coordinator.distill.dataset import DistillDataset
from coordinator.distill.proxy import ProxySet, proxy_from_volumes
from tests.common.test_fedavg_whole_field import _case


def _site_set(root: Path, hw: tuple[int, int]) -> ProxySet:
    """As :func:`coordinator.baselines.data.site_train_set` builds it."""
    vol = _case(root, hw)
    return dataclasses.replace(proxy_from_volumes([vol]), crop_sources=[(0, [vol])])


def _proxy() -> ProxySet:
    rng = np.random.default_rng(3)
    images = rng.normal(size=(2, 1, 32, 32)).astype(np.float32)
    return ProxySet(images, np.ones((2, 32, 32), np.uint8), ["p:0", "p:1"], ["a", "b"])


def test_pooled_site_slices_are_whole_field_crops_and_the_proxy_is_kept(tmp_path: Path) -> None:
    site = _site_set(tmp_path, (64, 24))  # organ (40 px) outside the centre crop
    assert int(site.masks.sum()) == 0
    pool = concat_sets([site, _proxy()], None)
    assert pool.crop_sources == site.crop_sources and len(pool) == 6
    ds = DistillDataset(pool, None, crop_seed=0)
    organ = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        items = [ds[i] for i in range(6)]
        organ += sum(int(it["mask"].sum()) for it in items[:4])
        for it in items[:4]:  # the 24 real columns sit at 4..27 of every crop
            assert torch.equal(it["valid"].sum(0), torch.tensor([0.0] * 4 + [32.0] * 24
                                                                 + [0.0] * 4))
        for k, it in enumerate(items[4:]):  # the proxy's own slices, untouched
            assert torch.equal(it["image"][0], torch.from_numpy(pool.images[4 + k, 0]))
            assert int(it["mask"].sum()) == 32 * 32
    assert organ > 0
    again = DistillDataset(pool, None, crop_seed=0)
    again.set_epoch(2)
    assert all(torch.equal(again[i]["image"], items[i]["image"]) for i in range(6))
    assert site.digest != dataclasses.replace(site, crop_sources=[]).digest  # not reused
    later = concat_sets([_proxy(), site], None)  # the site's rows moved: 2..5
    assert [(first, len(v)) for first, v in later.crop_sources] == [(2, 1)]
    late = DistillDataset(later, None, crop_seed=0)
    late.set_epoch(2)  # the same crops as in the site's own set, at their new rows
    assert all(torch.equal(late[2 + i]["mask"], items[i]["mask"]) for i in range(4))
    assert torch.equal(late[0]["image"][0], torch.from_numpy(later.images[0, 0]))


def test_a_site_field_that_fits_gives_the_stored_slices(tmp_path: Path) -> None:
    site = _site_set(tmp_path, (30, 28))
    plain = dataclasses.replace(site, crop_sources=[])
    assert site.digest == plain.digest  # earlier run folders stay valid
    a, b = DistillDataset(site, None, crop_seed=5), DistillDataset(plain, None)
    a.set_epoch(4)
    for i in range(len(site)):
        x, y = a[i], b[i]
        assert all(torch.equal(x[k], y[k]) for k in ("image", "mask", "valid"))
