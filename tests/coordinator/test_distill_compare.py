"""Paired comparisons of student rows in results.md (coordinator/distill/report.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from coordinator.distill.config import ExperimentConfig
from coordinator.distill.repeats import mean_row
from coordinator.distill.report import case_dice, compare_students, write_results

BASE = {"site_a": [0.60, 0.70, 0.80], "site_b": [0.50, 0.65, 0.75]}


def _seed_row(run: str, shift: float, seed: int) -> dict:
    """One seed's row; per-case Dice = BASE + shift + 0.01 * seed (seeds differ)."""
    cases = {site: {f"c{i}": {"dice": d + shift + 0.01 * seed, "voe": 0.2, "hd95": None}
                    for i, d in enumerate(vals)} for site, vals in BASE.items()}
    sites = {s: {"dice_mean": sum(v["dice"] for v in c.values()) / 3, "voe_mean": 0.2,
                 "hd95_mean": 1.0} for s, c in cases.items()}
    return {"run": run, "teachers": ["site_a", "site_b"], "weighting": run, "sites": sites,
            "mean_dice": sum(s["dice_mean"] for s in sites.values()) / 2, "seed": seed,
            "cases": cases}


def _row(run: str, shift: float) -> dict:
    return mean_row([_seed_row(run, shift, s) for s in (3, 4)], [3, 4], Path("x"))


def _cfg(tmp_path: Path) -> ExperimentConfig:
    site = {"name": "site_a", "data": "d", "teacher_dir": "t"}
    return ExperimentConfig.model_validate({
        "name": "cmp", "out": str(tmp_path), "proxy": "p", "sites": [site], "seed": 3,
        "repeats": 2, "runs": {"weightings": [{"name": "inverse_dice_loss"}, {"name": "equal"}]}})


def _rows() -> list[dict]:
    teacher = {"run": "teacher_site_a", "teachers": ["site_a"], "weighting": None,
               "sites": {"site_a": {"dice_mean": 0.9}, "site_b": {"dice_mean": 0.8}},
               "mean_dice": 0.85}
    return [teacher, _row("student_only", 0.0), _row("multi_equal", 0.1),
            _row("multi_inverse_dice_loss", 0.1)]


def test_case_dice_flattens_seeds_and_sites() -> None:
    per_seed = case_dice(_row("r", 0.0))
    assert sorted(per_seed) == ["3", "4"]
    assert per_seed["4"]["site_b/c2"] == pytest.approx(0.79)
    assert case_dice(_seed_row("r", 0.0, 3))["3"]["site_a/c0"] == pytest.approx(0.63)
    assert case_dice({"run": "teacher_x"}) == {}


def test_default_against_every_other_student(tmp_path: Path) -> None:
    comps = {b: c for a, b, c in compare_students(_rows(), _cfg(tmp_path))}
    assert list(comps) == ["student_only", "multi_equal"]  # teacher row has no cases: skipped
    no_kd, equal = comps["student_only"], comps["multi_equal"]
    assert (no_kd.n_seeds, no_kd.n_cases) == (2, 6)
    assert no_kd.mean_diff == pytest.approx(0.1)
    assert no_kd.ci_low == pytest.approx(0.1) and no_kd.ci_high == pytest.approx(0.1)
    assert no_kd.p_value == pytest.approx(2 / 2**6) and no_kd.significant()
    assert (equal.mean_diff, equal.ci_low, equal.ci_high, equal.p_value) == (0, 0, 0, 1)


def test_results_md_says_which_differences_are_significant(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    write_results(_rows(), cfg, tmp_path, 1.0)
    md = (tmp_path / "results.md").read_text()
    assert "## Paired comparisons (Dice)" in md
    assert ("`multi_inverse_dice_loss` scores significantly higher Dice than `student_only` "
            "(+0.100, 95 % CI [+0.100, +0.100], p = 0.0312).") in md
    assert ("The differences between `multi_inverse_dice_loss` and `multi_equal` are not "
            "significant at 0.05.") in md
    with (tmp_path / "comparisons.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [(r["vs"], r["significant"]) for r in table] == [("student_only", "True"),
                                                             ("multi_equal", "False")]


def test_no_section_without_per_case_scores(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k not in ("seed_cases", "cases")} for r in _rows()]
    write_results(rows, _cfg(tmp_path), tmp_path, 1.0)
    assert "Paired comparisons" not in (tmp_path / "results.md").read_text()
