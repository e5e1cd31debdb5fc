"""The fp16 memmap teacher cache: exact round trip, per-item reads
and a student trained from it identical to the in-memory path (losses, weights, resume)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common.kd.targets import TeacherTargets
from coordinator.distill.cache import CachedTargets, TeacherCache, read_rows
from tests._helpers import random_targets

DIGEST = "ab" * 32


def _fp16(t: TeacherTargets) -> TeacherTargets:
    """What the cache gives back: maps fp16-rounded, scalars float32."""
    return t.map(lambda v: v.half().float() if v.dim() > 2 else v.float())


def _same(a: TeacherTargets, b: TeacherTargets) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.as_dict().values(), b.as_dict().values(),
                                                 strict=True))


def test_round_trip_is_the_fp16_rounding_and_files_are_fp16(tmp_path: Path) -> None:
    t = random_targets(5, 16, seed=1)
    cache = TeacherCache(tmp_path)
    folder = cache.put("site_a", DIGEST, t)
    assert folder == tmp_path / "site_a-abababababababab"
    assert np.load(folder / "logits.npy", mmap_mode="r").dtype == np.float16
    assert np.load(folder / "at_deep.npy").shape == (5, 2, 2)
    assert np.load(folder / "rc_early.npy").dtype == np.float32
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["n"] == 5 and meta["shapes"]["logits"] == [5, 2, 16, 16]
    got = cache.get("site_a", DIGEST)
    assert got is not None and _same(got, _fp16(t))
    assert not torch.equal(got.logits, t.logits)  # fp16 did round (the stored precision)
    assert cache.get("site_b", DIGEST) is None


def test_streamed_build_equals_one_put(tmp_path: Path) -> None:
    t = random_targets(10, 16, seed=2)
    cache = TeacherCache(tmp_path)
    cache.build("s", DIGEST, 10, lambda a, b: t.index(slice(a, b)), chunk=3)
    streamed = cache.get("s", DIGEST)
    assert streamed is not None and _same(streamed, _fp16(t))
    with pytest.raises(ValueError, match="7 slices written, 10 announced"):
        cache.build("s2", DIGEST, 10, lambda a, b: t.index(slice(a, min(b, 7))), chunk=4)
    assert not list(tmp_path.glob("s2-*"))  # nothing half-written left behind


def test_cached_targets_select_index_and_rows(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path)
    ts = [random_targets(6, 16, seed=s) for s in range(3)]
    for j, t in enumerate(ts):
        cache.put(f"s{j}", DIGEST, t)
    lazy = CachedTargets.stack([cache.open(f"s{j}", DIGEST) for j in range(3)])  # type: ignore[misc]
    ram = _fp16(TeacherTargets.stack(ts))
    assert (lazy.num_teachers, lazy.batch_size) == (3, 6)
    assert _same(lazy.select([2, 0]).index(slice(1, 4)), ram.select([2, 0]).index(slice(1, 4)))
    assert _same(lazy.materialise(), ram)
    assert _same(lazy.teacher(1).index(slice(0, 6)), ram.teacher(1))


def test_read_rows_of_a_memmap_copies_only_those_rows(tmp_path: Path) -> None:
    arr = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    np.save(tmp_path / "a.npy", arr)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    rows = read_rows(mm, 1, 3)
    assert not isinstance(rows, np.memmap)
    np.testing.assert_array_equal(rows, arr[1:3])
    np.testing.assert_array_equal(read_rows(mm, 3, 9), arr[3:])
    np.testing.assert_array_equal(read_rows(mm[2:], 1, 3), arr[3:5])  # a view: plain slicing


# --- a tiny student: in-memory vs memmap path -----------------------------------------


def _targets(proxy: Any) -> TeacherTargets:
    fg = torch.from_numpy(proxy.masks).float()
    img = torch.from_numpy(proxy.images[:, 0])
    logits = torch.stack([torch.stack([1 - fg, fg], 1) * 4.0 + 0.1 * img[:, None],
                          torch.stack([fg, 1 - fg], 1)])
    n = len(proxy)
    return TeacherTargets(logits=logits, at_early=torch.stack([img[:, ::2, ::2]] * 2).contiguous(),
                          at_deep=torch.stack([img[:, ::8, ::8]] * 2).contiguous(),
                          rc_early=torch.rand(2, n, generator=torch.Generator().manual_seed(0)),
                          rc_deep=torch.zeros(2, n))


def _cfg(proxy_dir: Path, epochs: int) -> Any:
    from coordinator.distill.config import ExperimentConfig, SiteSpec, StudentTrainConfig

    s = StudentTrainConfig(model="enet", size=32, epochs=epochs, batch_size=16, device="cpu",
                           step_size_up=20, max_lr=0.005)
    site = SiteSpec(name="unused", data=proxy_dir, teacher_dir=proxy_dir)
    return ExperimentConfig(name="tiny", out=proxy_dir, proxy=proxy_dir, sites=[site], student=s)


def _train(data: Any, proxy_dir: Path, out: Path, epochs: int) -> tuple[dict, list[list[str]]]:
    import csv

    from coordinator.distill.config import WeightingSpec
    from coordinator.distill.student import StudentRun, train_student

    run = StudentRun("multi", [0, 1], WeightingSpec(name="inverse_dice_loss"))
    (out / "result.json").unlink(missing_ok=True)
    train_student(run, data, _cfg(proxy_dir, epochs), out)
    with (out / "metrics.csv").open() as fh:
        rows = [[v for k, v in r.items() if k != "seconds"] for r in csv.DictReader(fh)]
    return dict(torch.load(out / "last.pt", weights_only=False)["model"]), rows


def test_student_from_memmap_cache_equals_in_memory_and_resumes(tiny_sites: dict,
                                                                tmp_path: Path) -> None:
    from coordinator.distill.config import WeightingSpec
    from coordinator.distill.proxy import load_proxy
    from coordinator.distill.student import DistillData, run_weights, slice_weights

    proxy = load_proxy(tiny_sites["proxy"], 32)
    ram = _fp16(_targets(proxy))
    cache = TeacherCache(tmp_path / "cache")
    for j in range(2):
        cache.put(f"t{j}", DIGEST, ram.teacher(j))
    lazy = CachedTargets.stack([cache.open(f"t{j}", DIGEST) for j in range(2)])  # type: ignore[misc]
    spec = WeightingSpec(name="inverse_dice_loss")
    w_ram = slice_weights(spec, ram, proxy.masks)
    assert torch.equal(run_weights(spec, lazy, proxy.masks), w_ram)
    stored = list((tmp_path / "cache").glob("weights-*.npy"))
    assert len(stored) == 1 and np.array_equal(np.load(stored[0]), w_ram.numpy())
    assert not torch.allclose(w_ram[:, 0], w_ram[:, 1])  # the rule does tell teachers apart

    names = ["t0", "t1"]
    model_ram, rows_ram = _train(DistillData(proxy, ram, names, {}), tiny_sites["proxy"],
                                 tmp_path / "ram", 2)
    data = DistillData(proxy, lazy, names, {})
    model_mm, rows_mm = _train(data, tiny_sites["proxy"], tmp_path / "mm", 2)
    assert rows_mm == rows_ram and len(rows_mm) == 2  # same losses and teacher weights
    assert all(torch.equal(model_ram[k], model_mm[k]) for k in model_ram)
    _train(data, tiny_sites["proxy"], tmp_path / "cut", 1)
    model_cut, rows_cut = _train(data, tiny_sites["proxy"], tmp_path / "cut", 2)
    assert rows_cut == rows_ram and all(torch.equal(model_ram[k], model_cut[k]) for k in model_ram)


def test_proxy_on_disk_equals_load_proxy_and_gives_the_same_items(tiny_sites: dict,
                                                                   tmp_path: Path) -> None:
    from common.data.augment import AugmentConfig, build_augment
    from coordinator.distill.dataset import DistillDataset, load_proxy_on_disk
    from coordinator.distill.proxy import load_proxy

    ram = load_proxy(tiny_sites["proxy"], 32)
    disk = load_proxy_on_disk(tiny_sites["proxy"], 32, None, tmp_path / "proxy")
    assert isinstance(disk.images, np.memmap) and disk.images.shape == ram.images.shape
    np.testing.assert_array_equal(disk.images, ram.images)
    np.testing.assert_array_equal(disk.masks, ram.masks)
    assert (disk.slice_ids, disk.digest, disk.plan) == (ram.slice_ids, ram.digest, ram.plan)
    assert ram.extents is not None and disk.extents is not None
    np.testing.assert_array_equal(disk.extents, ram.extents)
    t = _fp16(_targets(ram))
    cache = TeacherCache(tmp_path / "c")
    for j in range(2):
        cache.put(f"t{j}", DIGEST, t.teacher(j))
    lazy = CachedTargets.stack([cache.open(f"t{j}", DIGEST) for j in range(2)])  # type: ignore[misc]
    geo = AugmentConfig(shift_scale_rotate_p=1.0)  # default rates of everything else
    a = DistillDataset(ram, t, build_augment(geo, seed=4))
    b = DistillDataset(disk, lazy, build_augment(geo, seed=4))
    for i in (0, 5, len(ram) - 1):
        x, y = a[i], b[i]
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x if k != "index")
