"""The plain-words verdict at the top of results.md.

From the paired comparisons of the default student against every other student row (``(default
run, other run, PairedComparison of default - other)``, :func:`coordinator.distill.report.
compare_students`): which rows differ significantly from the default row, better or worse
(``PairedComparison.significant()``: the paired test rejects at ``ALPHA`` AND the bootstrap CI
excludes 0), and whether adaptive teacher weighting (the default row, when its rule is adaptive)
beats ``equal`` weighting and plain KD (the row labelled ``hinton_kd``).
"""

from __future__ import annotations

from collections.abc import Sequence

from common.stats import ALPHA, PairedComparison

Comparison = tuple[str, str, PairedComparison]  # (default run, other run, default - other)

#: Weighting rules that do not adapt to the teachers (every other registered rule does).
FIXED_RULES = ("equal", "fixed")
EQUAL_RUN = "multi_equal"
PLAIN_KD_LABEL = "hinton_kd"


def _delta(c: PairedComparison) -> str:
    """``Δ +0.012 [−0.004, +0.030], p = 0.04`` (default minus other)."""
    return f"Δ {c.mean_diff:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}], p = {c.p_value:.2g}"


def _names(comps: Sequence[Comparison]) -> str:
    return ", ".join(f"`{b}` ({_delta(c)})" for _, b, c in comps)


def _other_row(comps: Sequence[Comparison], run: str) -> Comparison | None:
    """The comparison whose other run is ``run`` or ends with ``_<run>`` (``multi_<label>``)."""
    return next((x for x in comps if x[1] == run or x[1].endswith(f"_{run}")), None)


def _versus(comps: Sequence[Comparison], run: str, what: str) -> str:
    """One sentence: does the default row beat ``run`` (``what`` names it in words)?"""
    hit = _other_row(comps, run)
    if hit is None:
        return f"No {what} row (`{run}`) in this table."
    a, b, c = hit
    if not c.significant():
        return (f"Adaptive `{a}` vs {what} `{b}`: no significant difference ({_delta(c)}); "
                "this table does not show that adaptive weighting helps.")
    word = "beats" if c.mean_diff > 0 else "is worse than"
    return f"Adaptive `{a}` {word} {what} `{b}` ({_delta(c)})."


def verdict_lines(comps: Sequence[Comparison], default_rule: str | None) -> list[str]:
    """The verdict as sentences; ``default_rule``: the default row's weighting rule name."""
    if not comps:
        return ["No paired comparison (no student row besides the default has per-case "
                "scores): nothing can be called better or worse."]
    default = comps[0][0]
    n = min(c.n_cases for _, _, c in comps), max(c.n_seeds for _, _, c in comps)
    better = [x for x in comps if x[2].significant() and x[2].mean_diff < 0]
    worse = [x for x in comps if x[2].significant() and x[2].mean_diff > 0]
    same = [x for x in comps if not x[2].significant()]
    lines = [f"Against the default row `{default}` ({n[1]} seed(s) x {n[0]} test cases; called "
             f"only when the paired test gives p < {ALPHA} AND the 95 % CI excludes 0; not "
             "corrected for multiple comparisons; Δ = default minus row):"]
    lines.append(f"Better than the default: {_names(better)}." if better else
                 "No row is significantly better than the default.")
    lines.append(f"Worse than the default: {_names(worse)}." if worse else
                 "No row is significantly worse than the default.")
    if same:
        lines.append(f"Not significantly different: {', '.join(f'`{b}`' for _, b, _ in same)}.")
    if default_rule is None or default_rule in FIXED_RULES:
        lines.append(f"The default row's rule (`{default_rule}`) is not adaptive: this table "
                     "does not test adaptive weighting against `equal` or plain KD.")
    else:
        lines.append(_versus(comps, EQUAL_RUN, "equal weighting"))
        lines.append(_versus(comps, PLAIN_KD_LABEL, "plain KD"))
    return lines


def verdict_markdown(comps: Sequence[Comparison], default_rule: str | None) -> str:
    """The ``## Verdict`` section for the top of results.md: the first sentence, then a bullet
    per finding."""
    first, *rest = verdict_lines(comps, default_rule)
    bullets = "".join(f"- {s}\n" for s in rest)
    return f"## Verdict\n\n{first}\n\n" + (f"{bullets}\n" if bullets else "")
