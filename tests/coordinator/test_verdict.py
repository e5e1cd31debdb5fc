"""The results.md verdict: which rows differ from the default, and adaptive vs equal / plain KD."""

from __future__ import annotations

from common.stats import PairedComparison
from coordinator.distill.verdict import verdict_lines, verdict_markdown

D = "multi_inverse_dice_loss"


def _c(diff: float, lo: float, hi: float, p: float) -> PairedComparison:
    return PairedComparison(diff, lo, hi, p, "wilcoxon", 3, 36)


COMPS = [
    (D, "student_only", _c(0.05, 0.02, 0.08, 0.001)),  # default better: row worse
    (D, "multi_equal", _c(0.03, 0.01, 0.05, 0.01)),  # adaptive beats equal
    (D, "multi_hinton_kd", _c(0.01, -0.01, 0.03, 0.2)),  # not significant
    (D, "pooled", _c(-0.04, -0.07, -0.01, 0.004)),  # row better than the default
    (D, "multi_entropy", _c(0.03, -0.002, 0.06, 0.03)),  # test rejects, CI touches 0: not called
]


def test_verdict_names_better_worse_and_not_significant_rows() -> None:
    lines = verdict_lines(COMPS, "inverse_dice_loss")
    assert lines[0].startswith(f"Against the default row `{D}` (3 seed(s) x 36 test cases")
    assert lines[1] == "Better than the default: `pooled` (Δ -0.040 [-0.070, -0.010], p = 0.004)."
    assert lines[2] == ("Worse than the default: `student_only` (Δ +0.050 [+0.020, +0.080], "
                        "p = 0.001), `multi_equal` (Δ +0.030 [+0.010, +0.050], p = 0.01).")
    assert lines[3] == "Not significantly different: `multi_hinton_kd`, `multi_entropy`."
    assert lines[4] == (f"Adaptive `{D}` beats equal weighting `multi_equal` "
                        "(Δ +0.030 [+0.010, +0.050], p = 0.01).")
    assert lines[5].startswith(f"Adaptive `{D}` vs plain KD `multi_hinton_kd`: no significant "
                               "difference (Δ +0.010 [-0.010, +0.030], p = 0.2)")
    assert len(lines) == 6


def test_verdict_when_rows_are_missing_or_the_default_is_not_adaptive() -> None:
    only = [(D, "student_only", _c(-0.05, -0.08, -0.02, 0.001))]
    lines = verdict_lines(only, "inverse_dice_loss")
    assert lines[1].startswith("Better than the default: `student_only`")
    assert lines[2] == "No row is significantly worse than the default."
    assert lines[-2:] == ["No equal weighting row (`multi_equal`) in this table.",
                          "No plain KD row (`hinton_kd`) in this table."]
    fixed = verdict_lines([("multi_equal", "student_only", _c(0.0, -0.1, 0.1, 1.0))], "equal")
    assert fixed[-1].startswith("The default row's rule (`equal`) is not adaptive")
    assert verdict_lines([], None)[0].startswith("No paired comparison")
    assert verdict_markdown([], None) == f"## Verdict\n\n{verdict_lines([], None)[0]}\n\n"
    md = verdict_markdown(only, "inverse_dice_loss").splitlines()
    assert md[:3] == ["## Verdict", "", lines[0]]
    assert md[4:6] == ["- " + lines[1], "- " + lines[2]] and md[-1] == ""
