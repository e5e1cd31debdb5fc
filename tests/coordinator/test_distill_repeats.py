"""``repeats``: a student run over several seeds, averaged into one results row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from coordinator.distill.repeats import mean_row


def _row(dice_a: float, dice_b: float, hd: float) -> dict:
    return {"run": "multi_x", "teachers": ["a", "b"], "weighting": "x", "train_seconds": 2.0,
            "sites": {"a": {"dice_mean": dice_a, "voe_mean": 1 - dice_a, "hd95_mean": hd},
                      "b": {"dice_mean": dice_b, "voe_mean": 1 - dice_b, "hd95_mean": 4.0}},
            "mean_dice": (dice_a + dice_b) / 2}


def test_mean_row_by_hand(tmp_path: Path) -> None:
    row = mean_row([_row(0.8, 0.6, 3.0), _row(0.9, 0.7, float("nan"))], [0, 1], tmp_path)
    assert row["sites"]["a"]["dice_mean"] == pytest.approx(0.85)
    assert row["sites"]["b"]["voe_mean"] == pytest.approx(0.35)
    assert row["sites"]["a"]["hd95_mean"] == pytest.approx(3.0)  # NaN (empty prediction) skipped
    assert row["seed_mean_dice"] == pytest.approx([0.7, 0.8])
    assert row["mean_dice"] == pytest.approx(0.75)
    assert row["mean_dice_sd"] == pytest.approx(0.0707107, abs=1e-6)  # sample sd of 0.7, 0.8
    assert row["train_seconds"] == 4.0 and row["checkpoint_dir"] == str(tmp_path)


def test_repeated_experiment_writes_seed_folders_and_sd_column(
        tiny_sites: dict, tiny_teachers: dict, tmp_path: Path) -> None:
    from coordinator.distill import experiment
    from coordinator.distill.config import (
        ExperimentConfig,
        RunsConfig,
        SiteSpec,
        StudentTrainConfig,
        WeightingSpec,
    )
    from coordinator.export import result_rows

    cfg = ExperimentConfig(
        name="rep", out=tmp_path / "exp", proxy=tiny_sites["proxy"], seed=3, repeats=2,
        sites=[SiteSpec(name=n, data=tiny_sites[n], teacher_dir=tiny_teachers[n])
               for n in ("site_a", "site_b")],
        student=StudentTrainConfig(model="espnet", size=32, epochs=1, device="cpu"),
        runs=RunsConfig(baseline=False, single_teacher=False,
                        weightings=[WeightingSpec(name="inverse_dice_loss")]))
    rows = experiment.run_experiment(cfg)
    multi = rows[-1]
    runs = tmp_path / "exp" / "runs" / "multi_inverse_dice_loss"
    seeds = [json.loads((runs / f"seed{s}" / "result.json").read_text())["mean_dice"]
             for s in (3, 4)]
    assert multi["seeds"] == [3, 4] and multi["seed_mean_dice"] == seeds
    assert multi["mean_dice"] == pytest.approx(sum(seeds) / 2)
    assert json.loads((runs / "summary.json").read_text())["mean_dice"] == multi["mean_dice"]
    with (tmp_path / "exp" / "results.csv").open() as fh:
        table = list(csv.reader(fh))
    assert table[0][-3:] == ["mean Dice", "mean Dice sd", "seeds"]
    assert table[1][-2:] == ["-", "1"] and table[-1][-1] == "2"  # teacher row, repeated row
    assert [r["run"] for r in result_rows(tmp_path / "exp")] == ["multi_inverse_dice_loss"]
    assert (tmp_path / "exp" / "export" / "student.onnx").exists()
