"""How many test cases and seeds a paired row comparison needs to detect a mean-Dice difference.

Model of the paired per-case differences ``d[r, c]`` (seed r, test case c) between two student
rows trained with the same seeds: ``d = delta + s_r + u_c``, a seed effect ``s_r`` (sd
``seed_sd``: the two rows' students differ seed by seed) and a case effect ``u_c`` (sd
``case_sd``, including the seed x case noise, which a single-seed measurement cannot separate).
The repo calls a difference (``common.stats.PairedComparison.significant``) when the Wilcoxon
signed-rank test on the per-case means rejects at alpha AND the crossed seed x case bootstrap CI
excludes 0. Planning is a **normal approximation** on the paired sd: with ``z = z(1 - alpha/2)
+ z(power)``,

* the test needs ``C >= (z * case_sd / delta)^2 * pi / 3`` cases (pi / 3: the signed-rank test's
  asymptotic relative efficiency 3 / pi against the t test under normal differences);
* the CI needs ``seed_sd^2 / R + case_sd^2 / C <= (delta / z)^2``, which has no solution in C
  unless ``R > (z * seed_sd / delta)^2`` (seeds, not cases, bound the CI).

The design is then **checked by simulation** of the repo's own rule (``compare_paired`` +
``significant()``) on differences drawn from the model.

Variance inputs, all already measured (none is rerun here): per-case ``results.json`` files
(paired differences of the default row against every other student row; one seed lumps case
and seed x case noise into ``case_sd``), and the 3-seed / 1-seed summaries of
``bench/results/student_sizes.json`` and ``bench/results/feature_taps_decoder_vs_emkd.json``
(9 test cases each; a 1-seed comparison's bootstrap CI gives ``case_sd``, per-seed row means
of two rows give ``seed_sd``). Planning uses only pairs on the same student grid (size and
spacing rule), as the benchmark's rows are: one student grid, different KD settings. A seed
sd from per-seed means over 9 cases also holds 1/9 of the seed x case variance: an upper bound.

    python -m bench.power --out bench/results/power.json
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

Z95 = 1.959963984540054
WILCOXON_ARE = 3.0 / math.pi  # signed-rank vs t, normal differences
SEED_GRID = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40)


def case_sd_from_ci(lo: float, hi: float, n_cases: int) -> float:
    """Per-case sd of the differences from a one-seed percentile-bootstrap 95 % CI of their
    mean over ``n_cases`` cases (the bootstrap SE is the population sd / sqrt(C))."""
    se = (hi - lo) / (2.0 * Z95)
    return se * math.sqrt(n_cases) * math.sqrt(n_cases / (n_cases - 1))


def components(diff: np.ndarray) -> dict[str, float]:
    """``case_sd`` and (R >= 2) ``seed_sd``, ``resid_sd`` of a ``(R, C)`` difference matrix
    (two-way ANOVA without replication; one seed: ``case_sd`` = sd of the C differences)."""
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
            "resid_sd": math.sqrt(ms_res), "seeds": r, "cases": c}


def per_case_sources(paths: list[Path]) -> list[dict[str, Any]]:
    """One entry per (results.json, default row vs other student row) with per-case Dice."""
    out = []
    for path in paths:
        rows = [r for r in json.loads(path.read_text())["rows"]
                if not str(r["run"]).startswith("teacher_") and case_dice(r)]
        multi = [r for r in rows if str(r["run"]).startswith("multi_")]
        if not multi:
            continue
        base = multi[0]
        for other in (r for r in rows if r is not base):
            a, b, _, _ = align_scores(case_dice(base), case_dice(other))
            if a.shape[1] >= 3:
                out.append({"source": str(path), "pair": f"{base['run']} - {other['run']}",
                            **components(a - b)})
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


def detectable(case_sd: float, seed_sd: float, seeds: int, cases: int, alpha: float,
               power: float) -> float:
    """Smallest mean difference the design detects with ``power`` (normal approximation)."""
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    by_test = z * case_sd / math.sqrt(cases * WILCOXON_ARE)
    by_ci = z * math.sqrt(seed_sd**2 / seeds + case_sd**2 / cases)
    return max(by_test, by_ci)


def pooled(values: list[float]) -> float:
    """Root mean square (pooled sd of equally sized groups)."""
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else float("nan")


def cases_needed(case_sd: float, seed_sd: float, seeds: int, delta: float, alpha: float,
                 power: float) -> int | None:
    """Fewest test cases for the normal approximation (module doc); ``None``: no C suffices."""
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    c_test = (z * case_sd / delta) ** 2 / WILCOXON_ARE
    room = (delta / z) ** 2 - seed_sd**2 / seeds
    if room <= 0:
        return None
    return max(6, math.ceil(max(c_test, case_sd**2 / room)))


def simulate(case_sd: float, seed_sd: float, seeds: int, cases: int, delta: float,
             sims: int, seed: int = 0) -> float:
    """Fraction of ``sims`` simulated comparisons the repo's rule calls significant and
    positive (d = delta + seed effect + case effect; bootstrap 2,000 replicates)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(sims):
        d = (delta + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, case_sd, (1, cases))
             + np.zeros((seeds, cases)))
        c = compare_paired(d, np.zeros_like(d), n_boot=2000, seed=i)
        hits += c.significant() and c.mean_diff > 0
    return hits / sims


def plan(case_sd: float, seed_sd: float, delta: float, alpha: float, power: float,
         max_cases: int) -> dict[str, Any]:
    """Cases needed per seed count, and the cheapest design within ``max_cases`` (seeds cost
    a student training per row each, test cases only inference)."""
    table = {r: cases_needed(case_sd, seed_sd, r, delta, alpha, power) for r in SEED_GRID}
    feasible = [(r, c) for r, c in table.items() if c is not None and c <= max_cases]
    best = min(feasible, key=lambda rc: (rc[0], rc[1])) if feasible else None
    return {"cases_per_seed_count": {str(r): c for r, c in table.items()},
            "recommended": None if best is None else {"seeds": best[0], "cases": best[1]}}


def main(argv: list[str] | None = None) -> int:
    """Write the power analysis JSON (see the module doc)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, nargs="*",
                   default=[Path("demo_out/distill/results.json")])
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
    case_sd = pooled([e["case_sd"] for e in summ["case"] if same_grid(e["pair"])])
    seed_sd = pooled([e["seed_sd"] for e in summ["seed"] if same_grid(e["pair"])])
    bench_plan = plan(case_sd, seed_sd, args.delta, args.alpha, args.power, args.max_cases)
    z = stats.norm.ppf(1 - args.alpha / 2) + stats.norm.ppf(args.power)
    c_test = math.ceil((z * case_sd / args.delta) ** 2 / WILCOXON_ARE)
    checks = [{"seeds": 3, "cases": 9, "what": "the former benchmark (3 seeds x 9 cases)"},
              {"seeds": 3, "cases": c_test, "what": "3 seeds, the test's case count"},
              {"seeds": 5, "cases": c_test, "what": "5 seeds, the test's case count"},
              {"seeds": 5, "cases": 162, "what": "the full 3-site scenarios (54 test cases "
               "per site, repeats = 5)"}]
    if bench_plan["recommended"]:
        checks.append({**bench_plan["recommended"], "what": "recommended"})
    for chk in checks:
        chk["detectable_delta"] = detectable(case_sd, seed_sd, chk["seeds"], chk["cases"],
                                             args.alpha, args.power)
        chk["simulated_power"] = simulate(case_sd, seed_sd, chk["seeds"], chk["cases"],
                                          args.delta, args.sims)
    demo = [e for e in per_case if e["seeds"] == 1]
    demo_sd = pooled([e["case_sd"] for e in demo])
    out = {
        "method": "normal approximation on the paired sd (Wilcoxon ARE 3/pi; CI: seed and case "
                  "variance), checked by simulating common.stats.compare_paired + significant()",
        "delta": args.delta, "alpha": args.alpha, "power": args.power,
        "benchmark_scale": {"case_sd": case_sd, "seed_sd": seed_sd,
                            "cases_for_the_test_alone": c_test, **bench_plan,
                            "simulation_checks": checks, "sims": args.sims},
        "demo_scale": {"case_sd": demo_sd,
                       "cases_one_seed_test_only": cases_needed(demo_sd, 0.0, 1, args.delta,
                                                                args.alpha, args.power)
                       if demo else None},
        "sources": {"per_case": per_case, **summ},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("benchmark_scale", "demo_scale")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
