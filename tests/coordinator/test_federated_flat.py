"""The federated ServerApp flat in memory: query replies go into the fp16 memmap
teacher cache as they arrive (atomic per site, no half cache for a dropped site), the students
read the same lazy :class:`CachedTargets` as ``--local``, and the memory guard runs first."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from common.kd.targets import TeacherTargets
from coordinator.distill.cache import CachedTargets, RowFile, TeacherCache
from tests._helpers import random_targets

KEYS = {"site_a": "aa" * 32, "site_b": "bb" * 32, "site_c": "cc" * 32}
N, SIDE = 10, 16
PARTS = (slice(0, 3), slice(3, 7), slice(7, 10))  # chunks(10, 4): balanced 3, 4, 3


def _fp16(t: TeacherTargets) -> TeacherTargets:
    """What the cache gives back: maps fp16-rounded, scalars float32."""
    return t.map(lambda v: v.half().float() if v.dim() > 2 else v.float())


def test_answers_are_written_as_they_arrive_and_read_back_as_the_in_ram_stack(
        tmp_path: Path) -> None:
    from coordinator.fed_query import AnswerStore, fuse_sites

    full = {s: random_targets(N, SIDE, seed=j) for j, s in enumerate(KEYS)}
    store = AnswerStore(TeacherCache(tmp_path), KEYS, N)
    order = [("site_a", 2), ("site_b", 0), ("site_a", 0), ("site_c", 1), ("site_b", 2),
             ("site_a", 1), ("site_b", 1)]  # replies out of chunk order; site_c then dropped
    for site, i in order:
        store.add(site, PARTS[i].start, full[site].index(PARTS[i]).site_arrays())
        tmp = tmp_path / f"{site}-{KEYS[site][:16]}.tmp-{os.getpid()}"
        rows = RowFile(tmp / "logits.npy").rows(PARTS[i].start, PARTS[i].stop)  # on disk now
        assert np.array_equal(rows, full[site].logits[0, PARTS[i]].half().numpy())
        assert not (tmp_path / f"{site}-{KEYS[site][:16]}").exists()  # nothing final yet
    got = store.finish(["site_a", "site_b"])  # site_c was dropped after one chunk
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "site_a-aaaaaaaaaaaaaaaa", "site_b-bbbbbbbbbbbbbbbb"]  # no half cache, no temp folder
    names, lazy = fuse_sites(got, min_sites=2)
    names_ram, ram = fuse_sites({s: full[s] for s in ("site_a", "site_b")}, min_sites=2)
    assert names == names_ram == ["site_a", "site_b"] and isinstance(lazy, CachedTargets)
    want = _fp16(ram)
    for name, v in lazy.materialise().as_dict().items():
        assert torch.equal(v, want.as_dict()[name]), name
    assert torch.equal(lazy.index(slice(4, 6)).logits, want.logits[:, 4:6])  # per-batch reads


def test_a_site_writer_refuses_overlaps_and_an_incomplete_commit_leaves_nothing(
        tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path)
    t = random_targets(N, SIDE, seed=3)
    w = cache.writer("site_a", KEYS["site_a"], N)
    w.put(3, t.index(slice(3, 7)).site_arrays())
    with pytest.raises(ValueError, match="slices 5:8 out of 0:10 or written twice"):
        w.put(5, t.index(slice(5, 8)).site_arrays())
    with pytest.raises(ValueError, match="4 slices written, 10 announced"):
        w.commit()
    assert list(tmp_path.iterdir()) == [] and cache.open("site_a", KEYS["site_a"]) is None


def test_the_federated_run_calls_the_memory_guard_before_any_round(tmp_path: Path) -> None:
    """A tiny ``memory_cap_gb`` refuses the run before the ServerApp waits for a node; the
    estimate counts the expected sites, with the proxy and the answers on disk."""
    from common.data.phantom import make_proxy
    from coordinator.distill.memory import MemoryBudgetError
    from coordinator.server_app import FedSettings, run_federated
    from coordinator.topology.env import app_defaults

    proxy = make_proxy(tmp_path / "proxy", n_cases=2, seed=5, shape=(4, 32, 32))
    cfg = tmp_path / "exp.toml"
    cfg.write_text(f'proxy = "{proxy}"\nout = "{tmp_path / "exp"}"\nmemory_cap_gb = 0.5\n'
                   f'[[sites]]\nname = "a"\ndata = "{tmp_path}"\nteacher_dir = "{tmp_path}"\n'
                   '[student]\nsize = 32\n')

    class NoGrid:
        def get_node_ids(self) -> list[int]:
            raise AssertionError("the guard must refuse before any round")

    s = FedSettings.from_run_config({**app_defaults(), "config-path": str(cfg),
                                     "expected-sites": 5})
    with pytest.raises(MemoryBudgetError, match=r"5 sites x 8 proxy slices x 32 px.*teacher "
                       r"outputs on disk, proxy on disk.*0\.5 GB \(memory_cap_gb\)"):
        run_federated(NoGrid(), s, "r1")  # type: ignore[arg-type]
    assert np.load(tmp_path / "exp" / "proxy" / "images.npy", mmap_mode="r").shape == (
        8, 1, 32, 32)  # the proxy set was spilled to disk, not held in memory
