"""The coordinator's memory guard: formula, limits and the refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.distill import memory
from coordinator.distill.memory import MemoryBudgetError, MemoryPlan, check_memory, estimate


def test_estimate_terms_are_the_documented_formula() -> None:
    e = estimate(MemoryPlan(sites=2, slices=300, size=8, classes=2, batch_size=4))
    p = 64
    assert e["proxy"] == 256 * p * 5 * 2  # one case at a time (CASE_SLICES) when spilled
    in_ram = estimate(MemoryPlan(2, 300, 8, 2, 4, proxy_in_memory=True))
    assert in_ram["proxy"] == 300 * p * 5 * 2
    assert e["teachers"] == 0
    assert e["build"] == 300 * p * 3 * 4 * 3  # 2^21 px per teacher chunk, at most N slices
    big = estimate(MemoryPlan(sites=2, slices=5000, size=64))
    assert big["build"] == 2**21 * 3 * 4 * 3
    assert e["weights"] == 64 * 2 * p * 3 * 4 * 3
    assert e["training"] == 4 * p * (memory.ACT_BYTES + 2 * 3 * 16)
    assert e["total"] == e["base"] + e["proxy"] + e["training"]  # the largest phase here
    assert e["training"] > max(e["build"], e["weights"])
    ram = estimate(MemoryPlan(2, 10, 8, 2, 4, targets_in_memory=True))
    assert ram["teachers"] == int(2 * 10 * p * (2 + 1 / 4 + 1 / 64) * 8)


def test_federated_chunks_in_flight_are_counted() -> None:
    """J sites x W chunks x c slices: request (fp32 + uint8, array + wire) + fp16 reply x3."""
    plan = MemoryPlan(sites=12, slices=16000, size=256, query_chunk=512, query_window=4)
    e = estimate(plan)
    assert e["query"] == 12 * 4 * 512 * 256 * 256 * (10 + 3 * 6)
    assert e["total"] == e["base"] + e["proxy"] + e["query"]  # the largest phase here
    assert estimate(MemoryPlan(12, 16000, 256, query_chunk=512))["query"] == e["query"] // 4
    assert estimate(MemoryPlan(12, 16000, 256))["query"] == 0  # --local: no query round
    small = MemoryPlan(3, 100, 64, query_chunk=256, query_window=2)  # 512 in flight > 100 slices
    assert estimate(small)["query"] == 3 * 100 * 64 * 64 * (10 + 3 * 6)
    with pytest.raises(MemoryBudgetError, match="12 sites x 16000"):
        check_memory(plan, cap_gb=24.0)
    assert check_memory(MemoryPlan(12, 16000, 256, query_chunk=64, query_window=4), cap_gb=24.0)


def test_guard_refuses_over_the_cap_with_one_line_naming_estimate_limit_and_knob() -> None:
    plan = MemoryPlan(sites=10, slices=5000, size=384, batch_size=8, targets_in_memory=True,
                      proxy_in_memory=True)
    need = estimate(plan)["total"]
    assert 50e9 < need < 200e9  # the issue's ~59 GB of logits (+ maps, 2 copies)
    with pytest.raises(MemoryBudgetError) as err:
        check_memory(plan, cap_gb=24.0)
    msg = str(err.value)
    assert "\n" not in msg and f"{need / 1e9:.1f} GB" in msg and "24.0 GB (memory_cap_gb)" in msg
    assert "student.batch_size" in msg
    disk = MemoryPlan(sites=10, slices=5000, size=384, batch_size=8)
    assert check_memory(disk, cap_gb=24.0) == estimate(disk)["total"]  # memmap path fits


def test_guard_uses_available_ram_without_a_cap(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:  2048 kB\nMemAvailable:    1000 kB\n")
    monkeypatch.setitem(__import__("sys").modules, "psutil", None)  # force /proc/meminfo
    assert memory.available_bytes(info) == 1000 * 1024
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000 * 1024)
    with pytest.raises(MemoryBudgetError, match=r"limit is 0\.0 GB \(available RAM\)"):
        check_memory(MemoryPlan(3, 100, 64))


def test_experiment_config_cap_is_bounded_and_reaches_the_guard(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from coordinator.distill.config import ExperimentConfig
    from coordinator.distill.memory import guard_experiment

    base = {"proxy": tmp_path, "sites": [{"name": "a", "data": tmp_path,
                                          "teacher_dir": tmp_path}]}
    with pytest.raises(ValidationError):
        ExperimentConfig.model_validate({**base, "memory_cap_gb": 0})
    cfg = ExperimentConfig.model_validate({**base, "memory_cap_gb": 0.5,
                                           "student": {"size": 64}})
    with pytest.raises(MemoryBudgetError, match=r"0\.5 GB \(memory_cap_gb\)"):
        guard_experiment(cfg, slices=1000)  # base 0.63 GB alone exceeds 0.5
    ok = cfg.model_copy(update={"memory_cap_gb": 4.0})
    assert guard_experiment(ok, slices=1000) < 4e9
