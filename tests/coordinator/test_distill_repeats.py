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


def test_a_reused_seed_without_a_score_averages_as_nan(tmp_path: Path) -> None:
    """A seed whose sites scored nothing wrote ``mean_dice`` as null; reused, it reads back as
    NaN (not None), so the mean over seeds skips it instead of failing."""
    from coordinator.distill.student import _load_result

    empty = {**_row(0.0, 0.0, 1.0), "mean_dice": float("nan")}
    empty["sites"] = {"a": {"dice_mean": float("nan")}, "b": {"dice_mean": float("nan")}}
    path = tmp_path / "result.json"
    path.write_text(json.dumps(empty).replace("NaN", "null"))
    back = _load_result(path)
    assert back["mean_dice"] != back["mean_dice"]  # NaN
    row = mean_row([_row(0.8, 0.6, 3.0), back], [0, 1], tmp_path)
    assert row["mean_dice"] == pytest.approx(0.7)  # the scored seed only


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
    from coordinator.export import export_best_multi, result_rows

    cfg = ExperimentConfig(
        name="rep", out=tmp_path / "exp", proxy=tiny_sites["proxy"], seed=3, repeats=2,
        sites=[SiteSpec(name=n, data=tiny_sites[n], teacher_dir=tiny_teachers[n])
               for n in ("site_a", "site_b")],
        student=StudentTrainConfig(model="espnet", size=32, epochs=1, device="cpu"),
        runs=RunsConfig(baseline=False, single_teacher=False,
                        weightings=[WeightingSpec(name="inverse_dice_loss")]))
    from coordinator.local_sites import LocalSites

    rows = experiment.run_experiment(cfg, LocalSites(cfg))
    multi = rows[-1]
    runs = tmp_path / "exp" / "runs" / "multi_inverse_dice_loss"
    seeds = [json.loads((runs / f"seed{s}" / "result.json").read_text())["mean_dice"]
             for s in (3, 4)]
    assert multi["seeds"] == [3, 4] and multi["seed_mean_dice"] == seeds
    assert multi["mean_dice"] == pytest.approx(sum(seeds) / 2)
    assert json.loads((runs / "summary.json").read_text())["mean_dice"] == multi["mean_dice"]
    res3 = json.loads((runs / "seed3" / "result.json").read_text())
    cases = multi["seed_cases"]["3"]["site_a"]  # per-case scores kept for paired comparisons
    assert res3["seed"] == 3 and res3["cases"]["site_a"] == cases and len(cases) >= 1
    assert sum(v["dice"] for v in cases.values()) / len(cases) == pytest.approx(
        res3["sites"]["site_a"]["dice_mean"])
    with (tmp_path / "exp" / "results.csv").open() as fh:
        table = list(csv.reader(fh))
    assert table[0][-3:] == ["mean Dice", "mean Dice sd", "seeds"]
    assert table[1][-2:] == ["-", "1"] and table[-1][-1] == "2"  # teacher row, repeated row
    assert [r["run"] for r in result_rows(tmp_path / "exp")] == [
        "teacher_site_a", "teacher_site_b", "multi_inverse_dice_loss"]  # results.json
    assert not (tmp_path / "exp" / "export").exists()  # the engine does not export ...
    export_best_multi(cfg.out, rows, cfg)  # ... its caller does (distill --local, ServerApp)
    assert (tmp_path / "exp" / "export" / "student.onnx").exists()


def test_federated_repeats_score_every_seed_at_the_sites(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The one pipeline over the Grid trains one student per seed and has the sites score
    each of them (``GridSites.scorer``: the student's weights and plan in every evaluate)."""
    from types import SimpleNamespace

    import torch

    from coordinator import fed_sites
    from coordinator.distill import repeats, student
    from coordinator.distill.config import ExperimentConfig, WeightingSpec
    from coordinator.distill.student import DistillData, StudentRun

    trained: list[int] = []

    def fake_fit(run, data, cfg, out):  # type: ignore[no-untyped-def]
        trained.append(cfg.seed)
        model = torch.nn.Linear(1, 1)
        with torch.no_grad():
            model.weight.fill_(float(cfg.seed))
        return model, 1.0

    def fake_eval(grid, roster, name, state, cfg, s, run_id, plan):  # type: ignore[no-untyped-def]
        assert plan == "student-plan"  # the student's plan goes with every evaluate request
        dice = 0.5 + 0.1 * float(state["weight"].flatten()[0])  # seed 3: 0.8, seed 4: 0.9
        return ({"site_a": {"dice_mean": dice, "voe_mean": 1 - dice, "hd95_mean": 2.0}},
                {"site_a": {"case000": {"dice": dice, "voe": 1 - dice, "hd95": 2.0}}})

    monkeypatch.setattr(student, "_fit", fake_fit)
    monkeypatch.setattr(student, "run_fingerprint", lambda *a: "fp")
    monkeypatch.setattr(student, "claim_run_folder", lambda out, fp, ep: fp)
    monkeypatch.setattr(fed_sites, "eval_round", fake_eval)
    site = {"name": "site_a", "data": "d", "teacher_dir": "t"}
    cfg = ExperimentConfig.model_validate({"name": "t", "out": str(tmp_path), "proxy": "p",
                                           "sites": [site], "seed": 3, "repeats": 2})
    settings = SimpleNamespace(chunk_size=8, query_window=1, timeout=1.0, trail=None)
    sites = fed_sites.GridSites(None, settings, "r", cfg)  # type: ignore[arg-type]
    proxy = SimpleNamespace(plan="student-plan")
    data = DistillData(proxy, None, ["site_a"], {},  # type: ignore[arg-type]
                       scorer=sites.scorer(cfg, proxy))  # type: ignore[arg-type]
    run = StudentRun("multi_x", [0], WeightingSpec(name="equal"))
    row = repeats.train_repeats(run, data, cfg, tmp_path / "runs" / "multi_x")
    assert trained == [3, 4]
    assert row["seed_mean_dice"] == pytest.approx([0.8, 0.9])
    assert row["mean_dice"] == pytest.approx(0.85)
    assert row["seed_cases"]["4"]["site_a"]["case000"]["dice"] == pytest.approx(0.9)
    assert sites.status.sites["site_a"].state == "scored"
    summary = json.loads((tmp_path / "runs" / "multi_x" / "summary.json").read_text())
    assert summary["checkpoint_dir"].endswith("seed3")
