"""How many test cases and seeds a paired row comparison needs to detect a mean-Dice difference.

Model of the paired per-case differences ``d[r, c]`` (seed r, test case c) between two student
rows trained with the same seeds: ``d = delta + s_r + u_c + e_rc``, a seed effect ``s_r`` (sd
``seed_sd``: the two rows' students differ seed by seed), a case effect ``u_c`` (sd
``case_sd``: a case one row segments better whatever the seed) and a seed x case residual
``e_rc`` (sd ``resid_sd``). The repo calls a difference (``common.stats.PairedComparison
.significant``) when the Wilcoxon signed-rank test on the per-case means rejects at alpha AND the
crossed seed x case bootstrap CI excludes 0. Planning is a **normal approximation** on the
paired sd: with ``z = z(1 - alpha/2) + z(power)`` and ``v_c = case_sd^2 + resid_sd^2 / R`` (the
variance of one case's mean over R seeds),

* the test needs ``C >= (z^2 v_c / delta^2) * pi / 3`` cases (pi / 3: the signed-rank test's
  asymptotic relative efficiency 3 / pi against the t test under normal differences);
* the CI needs ``seed_sd^2 / R + v_c / C <= (delta / z)^2``, which has no solution in C unless
  ``R > (z * seed_sd / delta)^2`` (seeds, not cases, bound the CI).

The design is then **checked by simulation** of the repo's own rule (``compare_paired`` +
``significant()``) on differences drawn from the model.

Variance inputs, all already measured (nothing is retrained here):

* **the benchmark's own runs** (``--results``: ``results.json``, or the ``.json.gz`` pages of
  ``bench/results/scenarios/``): with 3 or more seeds, a two-way ANOVA of each paired
  difference of the default row against the other KD rows and the no-KD row of the same
  student gives all three sds; these are pooled per results file and plan the design;
* earlier, smaller summaries (``bench/results/student_sizes.json``,
  ``feature_taps_decoder_vs_emkd.json``: 9 test cases, 1 or 3 seeds), kept as a fallback when
  no multi-seed run is given: there ``case_sd`` lumps case and residual noise (``resid_sd`` 0)
  and the seed sd comes from per-seed means over 9 cases.

    python -m bench.power --results bench/results/scenarios/prostate_core_results.json.gz \\
        bench/results/scenarios/spleen_full_results.json.gz --out bench/results/power.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from common.stats import align_scores, compare_paired
from coordinator.distill.report import case_dice
from coordinator.distill.results_file import ResultRow, read_rows_file

Z95 = 1.959963984540054
WILCOXON_ARE = 3.0 / math.pi  # signed-rank vs t, normal differences
SEED_GRID = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 100, 128)


def case_sd_from_ci(lo: float, hi: float, n_cases: int) -> float:
    """Per-case sd of the differences from a one-seed percentile-bootstrap 95 % CI of their
    mean over ``n_cases`` cases (the bootstrap SE is the population sd / sqrt(C))."""
    se = (hi - lo) / (2.0 * Z95)
    return se * math.sqrt(n_cases) * math.sqrt(n_cases / (n_cases - 1))


def components(diff: np.ndarray) -> dict[str, float]:
    """Variance components of a ``(R, C)`` difference matrix (two-way ANOVA without
    replication): ``case_sd`` as one seed sees it (case + residual), and for R >= 2 the seed
    effect ``seed_sd``, the case effect alone ``case_effect_sd`` and the residual ``resid_sd``
    (one seed: ``case_sd`` = sd of the C differences)."""
    r, c = diff.shape
    if r == 1:
        return {"case_sd": float(diff.std(ddof=1)), "seeds": 1, "cases": c}
    grand = diff.mean()
    ms_seed = c * ((diff.mean(axis=1) - grand) ** 2).sum() / (r - 1)
    ms_case = r * ((diff.mean(axis=0) - grand) ** 2).sum() / (c - 1)
    resid = diff - diff.mean(axis=1, keepdims=True) - diff.mean(axis=0, keepdims=True) + grand
    ms_res = (resid**2).sum() / ((r - 1) * (c - 1))
    case_var = max(ms_case - ms_res, 0.0) / r + ms_res  # case + seed x case, as one seed sees it
    return {"case_sd": math.sqrt(case_var), "seed_sd": math.sqrt(max(ms_seed - ms_res, 0.0) / c),
            "case_effect_sd": math.sqrt(max(ms_case - ms_res, 0.0) / r),
            "resid_sd": math.sqrt(ms_res), "seeds": r, "cases": c}


def kd_pair(base: ResultRow, other: ResultRow) -> bool:
    """Whether ``other`` is a row the verdict weighs the default against as a KD setting: the
    no-KD row or another ``multi_`` row, with the default's student (not a peer trained on
    other data, a single teacher, or another student network)."""
    run = str(other["run"])
    return (run == "student_only" or run.startswith("multi_")) and \
        other.get("student") == base.get("student")


def per_case_sources(paths: list[Path]) -> list[dict[str, Any]]:
    """One entry per (results file, default row vs other student row) with the components of
    the per-case Dice differences and whether the pair is a KD pair (:func:`kd_pair`)."""
    out = []
    for path in paths:
        rows = [r for r in read_rows_file(path)
                if not str(r["run"]).startswith("teacher_") and case_dice(r)]
        multi = [r for r in rows if str(r["run"]).startswith("multi_")]
        if not multi:
            continue
        base = multi[0]
        for other in (r for r in rows if r is not base):
            a, b, _, _ = align_scores(case_dice(base), case_dice(other))
            if a.shape[1] >= 3:
                out.append({"source": str(path), "pair": f"{base['run']} - {other['run']}",
                            "kd_pair": kd_pair(base, other), **components(a - b)})
    return out


def same_grid(pair: str) -> bool:
    """Whether both variants of ``"64px_median_exclude/row - 64px_median_augment_kd/row"``
    share size and spacing rule (the first two ``_`` fields); other names count as same."""
    sides = [side.strip().split("/")[0] for side in pair.split(" - ")]
    grids = {"_".join(v.split("_")[:2]) for v in sides if v.split("_")[0].endswith("px")}
    return len(grids) <= 1


def summary_sources(sizes: Path | None, taps: Path | None) -> dict[str, list[dict[str, Any]]]:
    """``case`` estimates (one-seed bootstrap CIs) and ``seed`` estimates (sd of per-seed
    differences of two rows' mean Dice) from the two bench summaries, when present."""
    case, seed = [], []
    if sizes is not None and sizes.is_file():
        data = json.loads(sizes.read_text())
        for pair, c in data["comparisons"].items():
            if len(c["seeds"]) == 1:
                lo, hi = c["ci95"]
                case.append({"pair": pair, "case_sd": case_sd_from_ci(lo, hi, c["n_cases"]),
                             "cases": c["n_cases"]})
        means = {k: v["seeds"] for k, v in data["mean_dice"].items() if len(v["seeds"]) >= 3}
        names = sorted(means)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                d = [means[a][s] - means[b][s] for s in sorted(set(means[a]) & set(means[b]))]
                seed.append({"pair": f"{a} - {b}", "seed_sd": float(np.std(d, ddof=1)),
                             "seeds": len(d)})
    if taps is not None and taps.is_file():
        t = json.loads(taps.read_text())
        d = np.subtract(t["decoder_seed_mean"], t["emkd_seed_mean"])
        seed.append({"pair": "feature_taps decoder - emkd", "seed_sd": float(np.std(d, ddof=1)),
                     "seeds": len(d)})
    return {"case": case, "seed": seed}


def _z(alpha: float, power: float) -> float:
    return float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))


def detectable(case_sd: float, seed_sd: float, seeds: int, cases: int, alpha: float,
               power: float, resid_sd: float = 0.0) -> float:
    """Smallest mean difference the design detects with ``power`` (normal approximation)."""
    z, v_case = _z(alpha, power), case_sd**2 + resid_sd**2 / seeds
    by_test = z * math.sqrt(v_case / (cases * WILCOXON_ARE))
    by_ci = z * math.sqrt(seed_sd**2 / seeds + v_case / cases)
    return max(by_test, by_ci)


def pooled(values: list[float]) -> float:
    """Root mean square (pooled sd of equally sized groups)."""
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else float("nan")


def cases_needed(case_sd: float, seed_sd: float, seeds: int, delta: float, alpha: float,
                 power: float, resid_sd: float = 0.0) -> int | None:
    """Fewest test cases for the normal approximation (module doc); ``None``: no C suffices."""
    z, v_case = _z(alpha, power), case_sd**2 + resid_sd**2 / seeds
    c_test = z**2 * v_case / delta**2 / WILCOXON_ARE
    room = (delta / z) ** 2 - seed_sd**2 / seeds
    if room <= 0:
        return None
    return max(6, math.ceil(max(c_test, v_case / room)))


def seeds_needed(case_sd: float, seed_sd: float, cases: int, delta: float, alpha: float,
                 power: float, resid_sd: float = 0.0, most: int = 10_000) -> int | None:
    """Fewest seeds with which ``cases`` test cases detect ``delta`` (``None``: over ``most``)."""
    for r in range(1, most + 1):
        if detectable(case_sd, seed_sd, r, cases, alpha, power, resid_sd) <= delta:
            return r
    return None


def simulate(case_sd: float, seed_sd: float, seeds: int, cases: int, delta: float,
             sims: int, seed: int = 0, resid_sd: float = 0.0) -> float:
    """Fraction of ``sims`` simulated comparisons the repo's rule calls significant and
    positive (d = delta + seed effect + case effect + residual; bootstrap 2,000 replicates)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(sims):
        d = (delta + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, case_sd, (1, cases))
             + rng.normal(0, resid_sd, (seeds, cases)))
        c = compare_paired(d, np.zeros_like(d), n_boot=2000, seed=i)
        hits += c.significant() and c.mean_diff > 0
    return hits / sims


def plan(case_sd: float, seed_sd: float, delta: float, alpha: float, power: float,
         max_cases: int, resid_sd: float = 0.0) -> dict[str, Any]:
    """Cases needed per seed count, and the cheapest design within ``max_cases`` (seeds cost
    a student training per row each, test cases only inference)."""
    table = {r: cases_needed(case_sd, seed_sd, r, delta, alpha, power, resid_sd)
             for r in SEED_GRID}
    feasible = [(r, c) for r, c in table.items() if c is not None and c <= max_cases]
    best = min(feasible, key=lambda rc: (rc[0], rc[1])) if feasible else None
    return {"cases_per_seed_count": {str(r): c for r, c in table.items()},
            "recommended": None if best is None else {"seeds": best[0], "cases": best[1]}}


def measured(per_case: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per results file with 3+ seeds: its KD pairs' components, pooled (root mean square)."""
    by_src: dict[str, list[dict[str, Any]]] = {}
    for e in per_case:
        if e["kd_pair"] and e["seeds"] >= 3:
            by_src.setdefault(e["source"], []).append(e)
    return {src: {"pairs": [e["pair"] for e in es], "seeds": min(e["seeds"] for e in es),
                  "cases": min(e["cases"] for e in es),
                  **{k: pooled([e[k] for e in es])
                     for k in ("seed_sd", "case_effect_sd", "resid_sd")}}
            for src, es in by_src.items()}


def measured_design(v: dict[str, Any], delta: float, alpha: float, power: float,
                    max_cases: int, sims: int) -> dict[str, Any]:
    """What the run's own design detects, and how many seeds ``delta`` needs at its case
    count (each checked by simulation)."""
    sd = (v["case_effect_sd"], v["seed_sd"])
    r, c, resid = v["seeds"], v["cases"], v["resid_sd"]
    det = detectable(*sd, r, c, alpha, power, resid)
    need = seeds_needed(*sd, c, delta, alpha, power, resid)
    checks = [{"seeds": r, "cases": c, "delta": delta, "what": "this run's design"},
              {"seeds": r, "cases": c, "delta": round(det, 4),
               "what": "this run's design at the difference it detects"}]
    if need is not None:
        checks.append({"seeds": need, "cases": c, "delta": delta,
                       "what": "the seeds the difference needs at this case count"})
    for chk in checks:
        chk["simulated_power"] = simulate(*sd, chk["seeds"], chk["cases"], chk["delta"], sims,
                                          resid_sd=resid)
    return {**v, "detectable_delta": det, "seeds_needed": need,
            **plan(*sd, delta, alpha, power, max_cases, resid), "simulation_checks": checks}


def summary_design(summ: dict[str, list[dict[str, Any]]], delta: float, alpha: float,
                   power: float, max_cases: int, sims: int) -> dict[str, Any]:
    """The design from the earlier small summaries (no multi-seed run given)."""
    case_sd = pooled([e["case_sd"] for e in summ["case"] if same_grid(e["pair"])])
    seed_sd = pooled([e["seed_sd"] for e in summ["seed"] if same_grid(e["pair"])])
    c_test = math.ceil((_z(alpha, power) * case_sd / delta) ** 2 / WILCOXON_ARE)
    checks: list[dict[str, Any]] = [{"seeds": 3, "cases": 9}, {"seeds": 5, "cases": 162}]
    for chk in checks:
        chk["detectable_delta"] = detectable(case_sd, seed_sd, chk["seeds"], chk["cases"],
                                             alpha, power)
        chk["simulated_power"] = simulate(case_sd, seed_sd, chk["seeds"], chk["cases"], delta,
                                          sims)
    return {"case_sd": case_sd, "seed_sd": seed_sd, "cases_for_the_test_alone": c_test,
            **plan(case_sd, seed_sd, delta, alpha, power, max_cases),
            "simulation_checks": checks}


def main(argv: list[str] | None = None) -> int:
    """Write the power analysis JSON (see the module doc)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, nargs="*",
                   default=[Path("demo_out/distill/results.json")],
                   help="results.json files or bench/results/scenarios/*_results.json.gz")
    p.add_argument("--sizes", type=Path, default=Path("bench/results/student_sizes.json"))
    p.add_argument("--taps", type=Path,
                   default=Path("bench/results/feature_taps_decoder_vs_emkd.json"))
    p.add_argument("--delta", type=float, default=0.02)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--power", type=float, default=0.8)
    p.add_argument("--max-cases", type=int, default=200, help="largest test set considered")
    p.add_argument("--sims", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path("bench/results/power.json"))
    args = p.parse_args(argv)
    per_case = per_case_sources([f for f in args.results if f.is_file()])
    summ = summary_sources(args.sizes, args.taps)
    design = (args.delta, args.alpha, args.power, args.max_cases, args.sims)
    runs = {src: measured_design(v, *design) for src, v in measured(per_case).items()}
    out: dict[str, Any] = {
        "method": "normal approximation on the paired sd (Wilcoxon ARE 3/pi; CI: seed, case "
                  "and seed x case variance), checked by simulating "
                  "common.stats.compare_paired + significant()",
        "delta": args.delta, "alpha": args.alpha, "power": args.power, "sims": args.sims,
        "planning_basis": "measured runs" if runs else "earlier summaries",
        "measured_runs": runs,
        "earlier_summaries": summary_design(summ, *design),
        "sources": {"per_case": per_case, **summ},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("planning_basis", "measured_runs")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
