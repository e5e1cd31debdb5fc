"""The benchmark scenarios: every config under configs/benchmark loads and sizes its test set."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from common.config import load_config
from common.data.split import split_cases
from coordinator.distill.config import ExperimentConfig
from site_node.train_config import TeacherTrainConfig

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "configs" / "benchmark"
SCENARIOS = {"prostate": ["site_p1", "site_p2", "site_p3"],
             "prostate_stress": ["site_a", "site_b", "site_c"],
             "spleen": ["site_decathlon", "site_duke"]}


@pytest.mark.parametrize("name", [f"{s}{q}" for s in SCENARIOS for q in ("", "_quick")])
def test_scenario_config_loads(name: str) -> None:
    path = BENCH / f"{name}.toml"
    cfg = load_config(path, ExperimentConfig).resolve_paths(path.parent.resolve())
    scenario = name.removesuffix("_quick")
    assert [s.name for s in cfg.sites] == SCENARIOS[scenario]
    out = ROOT / "benchmark_out" / name
    assert cfg.out == out / "distill" and cfg.proxy == out / "data" / "proxy"
    assert all(s.data == out / "data" / s.name for s in cfg.sites)
    assert cfg.runs.weightings[0].name == "inverse_dice_loss"  # the default row
    labels = [w.label for w in cfg.runs.weightings]
    assert "equal" in labels and "hinton_kd" in labels  # the verdict's two references
    assert cfg.repeats == (1 if name.endswith("_quick") else 5)


@pytest.mark.parametrize("name,cases,split", [("teacher", 72, (13, 5, 54)),
                                              ("teacher_quick", 12, (5, 1, 6))])
def test_teacher_split_sizes(name: str, cases: int, split: tuple[int, int, int]) -> None:
    cfg = load_config(BENCH / f"{name}.toml", TeacherTrainConfig)
    s = split_cases([f"case{i:03d}" for i in range(cases)], cfg.val_fraction, cfg.test_fraction,
                    cfg.seed)
    assert (len(s.train), len(s.val), len(s.test)) == split


def test_benchmark_script_rejects_an_unknown_scenario() -> None:
    run = subprocess.run(["bash", str(ROOT / "scripts" / "benchmark.sh"), "--scenario", "liver"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert ("unknown scenario 'liver' (prostate, prostate_stress, spleen, prostate_ablations, "
            "prostate_proxy_size, all)") in run.stderr


@pytest.mark.parametrize("quick", ["", "_quick"])
def test_ablations_reuse_the_prostate_sites_and_change_one_setting_per_row(quick: str) -> None:
    path = BENCH / f"prostate_ablations{quick}.toml"
    cfg = load_config(path, ExperimentConfig).resolve_paths(path.parent.resolve())
    prostate = load_config(BENCH / f"prostate{quick}.toml", ExperimentConfig).resolve_paths(
        BENCH.resolve())
    assert cfg.sites == prostate.sites and cfg.proxy == prostate.proxy
    assert cfg.out == ROOT / "benchmark_out" / f"prostate{quick}" / "ablations"
    assert cfg.student == prostate.student and cfg.kd == prostate.kd
    default, *rows = cfg.runs.weightings
    assert default.name == "inverse_dice_loss" and not default.kwargs
    for row in rows:  # exactly one change against the default row
        changes = len(row.kwargs) + len(row.kd or {}) + (row.student is not None)
        assert changes == 1, row.label


def test_full_scenarios_hold_the_papers_peers_and_the_students() -> None:
    for name in SCENARIOS:
        cfg = load_config(BENCH / f"{name}.toml", ExperimentConfig)
        labels = {w.label for w in cfg.runs.weightings}
        assert {"hinton_kd", "at_only", "amtml_kd", "mtkd_lraspp"} <= labels, name
        assert cfg.runs.single_teacher and cfg.runs.fedprox and cfg.runs.fedbn, name


@pytest.mark.parametrize("quick", ["", "_quick"])
def test_proxy_size_runs_the_prostate_sites_without_teacher_rows(quick: str) -> None:
    """Same sites, teachers, student and KD settings as the prostate scenario (so its rows are
    the full-proxy reference), no teacher rows, the no-KD, default and equal rows."""
    path = BENCH / f"prostate_proxy_size{quick}.toml"
    cfg = load_config(path, ExperimentConfig).resolve_paths(path.parent.resolve())
    prostate = load_config(BENCH / f"prostate{quick}.toml", ExperimentConfig).resolve_paths(
        BENCH.resolve())
    assert cfg.sites == prostate.sites and cfg.proxy == prostate.proxy
    assert (cfg.student, cfg.kd, cfg.seed, cfg.repeats) == (
        prostate.student, prostate.kd, prostate.seed, prostate.repeats)
    runs = cfg.runs
    assert runs.baseline and not runs.teacher_rows and not runs.single_teacher
    assert [w.label for w in runs.weightings] == ["inverse_dice_loss", "equal"]
    assert [w.identity() for w in runs.weightings] == [
        w.identity() for w in prostate.runs.weightings if w.label in ("inverse_dice_loss",
                                                                       "equal")]


def test_espnet_diagnosis_runs_on_the_spleen_sites_with_only_the_kl_weight_changed() -> None:
    path = BENCH / "spleen_espnet.toml"
    cfg = load_config(path, ExperimentConfig).resolve_paths(path.parent.resolve())
    spleen = load_config(BENCH / "spleen.toml", ExperimentConfig).resolve_paths(BENCH.resolve())
    assert cfg.sites == spleen.sites and cfg.proxy == spleen.proxy
    assert cfg.out == ROOT / "benchmark_out" / "spleen" / "espnet"
    assert (cfg.student.model, cfg.student.epochs, cfg.repeats) == ("espnet", 60, 1)
    assert cfg.kd == spleen.kd  # the default KD is spleen's
    betas = [w.kd.get("beta") if w.kd else None for w in cfg.runs.weightings]
    assert betas == [None, 0.01, 0.0]
