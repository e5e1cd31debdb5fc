"""Teacher rows are kept per teacher under a key of what they depend on, and reused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.config import load_config
from coordinator.distill.config import ExperimentConfig
from coordinator.teacher_rows import read_row, row_key, teacher_rows, write_row


def _cfg(tiny_sites: dict, tiny_teachers: dict, tmp_path: Path) -> ExperimentConfig:
    from tests._helpers import experiment_toml

    teachers = {}
    for n in ("site_a", "site_b"):  # copies: one teacher is changed below
        teachers[n] = tmp_path / "t" / n
        shutil.copytree(tiny_teachers[n], teachers[n])
    path = experiment_toml(tmp_path, "trows", tiny_sites["proxy"],
                           {n: (tiny_sites[n], teachers[n]) for n in ("site_a", "site_b")})
    return load_config(path, ExperimentConfig)


def test_kept_rows_are_reused_and_a_changed_teacher_is_scored_again(
        tiny_sites: dict, tiny_teachers: dict, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(tiny_sites, tiny_teachers, tmp_path)
    first = teacher_rows(cfg)
    assert [r["run"] for r in first] == ["teacher_site_a", "teacher_site_b"]
    assert all(set(r["sites"]) == {"site_a", "site_b"} for r in first)
    kept = cfg.out / "teacher_rows" / "site_b.json"
    assert json.loads(kept.read_text())["key"] == row_key(cfg, cfg.sites[1])

    # site_b's kept row is marked; a rerun must return it as it is, not score again
    marked = dict(first[1], mean_dice=0.123)
    write_row(kept, row_key(cfg, cfg.sites[1]), marked)
    caplog.set_level("INFO", logger="coordinator.teacher_rows")
    again = teacher_rows(cfg)
    assert again[1]["mean_dice"] == 0.123 and again[0] == first[0]
    assert sum("reused" in r.getMessage() for r in caplog.records) == 2

    # a retrained teacher (other weights) changes its key: scored again, the mark is gone
    with (cfg.sites[1].teacher_dir / "best.pt").open("ab") as fh:
        fh.write(b"\0")
    assert read_row(kept, row_key(cfg, cfg.sites[1])) is None
    assert read_row(kept, json.loads(kept.read_text())["key"]) is not None


def test_a_damaged_record_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "site.json"
    path.write_text("{not json")
    assert read_row(path, "k") is None
    write_row(path, "k", {"run": "teacher_x", "mean_dice": 0.5})
    assert read_row(path, "k") == {"run": "teacher_x", "mean_dice": 0.5}
    assert read_row(path, "other") is None
