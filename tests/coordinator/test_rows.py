"""``coordinator distill --rows``: only the named rows run, the rest are named in the report,
and a later full run reuses every finished run."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import ConfigError, load_config
from coordinator.distill.config import ExperimentConfig
from coordinator.distill.rows import configured_rows, restrict_rows

FULL = {
    "name": "rows", "proxy": "proxy", "repeats": 1,
    "sites": [{"name": "a", "data": "a", "teacher_dir": "ta"}],
    "runs": {"baseline": True, "single_teacher": True, "local_only": True, "pooled": True,
             "weightings": [{"name": "inverse_dice_loss"}, {"name": "equal"},
                            {"name": "equal", "label": "hinton_kd", "kd": {"alpha": 0.0}}],
             "fedavg": {"rounds": 2}, "fedprox": {"rounds": 2, "mu": 0.01},
             "fedbn": {"rounds": 2}},
}


def _cfg() -> ExperimentConfig:
    return ExperimentConfig.model_validate(FULL)


def test_configured_rows_in_report_order() -> None:
    assert configured_rows(_cfg()) == [
        "student_only", "single", "inverse_dice_loss", "equal", "hinton_kd", "local_only",
        "pooled", "fedavg", "fedprox", "fedbn"]


def test_only_the_named_rows_and_the_default_are_kept() -> None:
    cfg = restrict_rows(_cfg(), ["student_only", "multi_hinton_kd", "fedprox"])
    runs = cfg.runs
    assert [w.label for w in runs.weightings] == ["inverse_dice_loss", "hinton_kd"]
    assert runs.baseline and not runs.single_teacher
    assert (runs.local_only, runs.pooled) == (False, False)
    assert runs.fedavg is None and runs.fedbn is None and runs.fedprox is not None
    assert runs.fedprox.mu == 0.01
    assert runs.left_out == ["single", "equal", "local_only", "pooled", "fedavg", "fedbn"]
    assert configured_rows(cfg) == ["student_only", "inverse_dice_loss", "hinton_kd",
                                    "fedprox"]


def test_a_row_the_config_lacks_is_one_line_listing_the_rows() -> None:
    with pytest.raises(ConfigError) as err:
        restrict_rows(_cfg(), ["equal", "amtml_kd"])
    msg = str(err.value)
    assert "amtml_kd" in msg and "student_only, single, inverse_dice_loss" in msg
    assert "\n" not in msg


def test_rows_then_full_run_reuses_the_finished_runs(tiny_sites: dict, tiny_teachers: dict,
                                                     tmp_path: Path) -> None:
    """A ``--rows`` run writes only its rows and names the others; the full run afterwards
    trains only the missing row (the finished run's checkpoint is not rewritten)."""
    from coordinator.distill import experiment
    from coordinator.export import result_rows
    from coordinator.local_sites import LocalSites
    from tests._helpers import experiment_toml

    path = experiment_toml(tmp_path, "rows", tiny_sites["proxy"],
                           {n: (tiny_sites[n], tiny_teachers[n]) for n in ("site_a", "site_b")},
                           student={"batch_size": 32, "augment": {"enabled": False}})
    path.write_text(path.read_text().replace(
        'weightings = [\n    { name = "inverse_dice_loss" },\n]',
        'weightings = [{ name = "inverse_dice_loss" }, { name = "equal" }]'))
    full = load_config(path, ExperimentConfig)
    part = restrict_rows(full, ["inverse_dice_loss"])
    part = part.model_copy(update={"runs": part.runs.model_copy(update={"teacher_rows": False})})
    experiment.run_experiment(part, LocalSites(part))
    runs = {r["run"] for r in result_rows(full.out)}
    assert "multi_inverse_dice_loss" in runs and "multi_equal" not in runs
    assert not any(r.startswith("teacher_") for r in runs)  # [runs] teacher_rows = false
    report = (full.out / "results.md").read_text()
    assert "Not run: equal (left out with --rows" in report
    ckpt = full.out / "runs" / "multi_inverse_dice_loss" / "last.pt"
    before = ckpt.stat().st_mtime_ns
    experiment.run_experiment(full, LocalSites(full))
    assert {"multi_inverse_dice_loss", "multi_equal", "teacher_site_a"} <= {
        r["run"] for r in result_rows(full.out)}
    assert ckpt.stat().st_mtime_ns == before  # reused, not retrained
    assert "left out with --rows" not in (full.out / "results.md").read_text()
