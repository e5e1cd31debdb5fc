"""Student grid variants: does a larger student canvas cost Dice?

A variant is ``<size>px_<spacing rule>_<padding rule>`` (``[student] size``, ``[student]
spacing_rule``, ``[kd] padding``). For each variant and seed the base experiment is rewritten
with the default multi-teacher student (inverse_dice_loss) and, unless ``--kd-only``, the no-KD
student, and run with ``coordinator distill --local`` (one process per variant and seed,
``OMP_NUM_THREADS=1``, ``--jobs`` at a time; finished runs are reused). Every student is scored
on each site's held-out cases on their native grids; the JSON holds each run's mean Dice over
seeds and cases and paired comparisons (bootstrap CI over seeds and cases + Wilcoxon over the
per-case means) between every pair of variants.

    python -m bench.bench_student_sizes --config configs/demo_prostate.toml \
        --variants 64px_median_exclude 256px_fill_exclude --seeds 0 1 2 --kd-only \
        --workdir demo_out/student_sizes --jobs 2 --out bench/results/student_sizes.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.config import load_config
from common.io import strict_json_dumps
from common.stats import align_scores, compare_paired
from coordinator.distill.config import ExperimentConfig, RunsConfig, WeightingSpec

RUNS = ("student_only", "multi_inverse_dice_loss")


def parse_variant(label: str) -> tuple[int, str, str]:
    """``"256px_fill_exclude"`` -> ``(256, "fill", "exclude")``."""
    size, rule, padding = label.split("_", 2)
    return int(size.removesuffix("px")), rule, padding


def variant(base: ExperimentConfig, label: str, seed: int, args: argparse.Namespace
            ) -> ExperimentConfig:
    """``base`` with the student grid of ``label``, ``args.epochs``, one seed, one or two runs."""
    size, rule, padding = parse_variant(label)
    runs = RunsConfig(baseline=not args.kd_only, single_teacher=False, local_only=False,
                      pooled=False, weightings=[WeightingSpec(name="inverse_dice_loss")])
    student = base.student.model_copy(update={"size": size, "epochs": args.epochs,
                                              "spacing_rule": rule})
    kd = base.kd.model_copy(update={"padding": padding})
    out = args.workdir / label / f"seed{seed}"
    return base.model_copy(update={"out": out, "runs": runs, "student": student, "kd": kd,
                                   "seed": seed, "repeats": 1})


def write_variants(base: ExperimentConfig, args: argparse.Namespace) -> dict[str, Path]:
    """One YAML config per variant and seed; ``{"<label>/seed<s>": config path}``."""
    import yaml

    paths = {}
    for label, seed in itertools.product(args.variants, args.seeds):
        cfg = variant(base, label, seed, args)
        ExperimentConfig.model_validate(cfg.model_dump())  # refuse a bad label before running
        path = args.workdir / f"{label}_seed{seed}.yaml"
        path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
        paths[f"{label}/seed{seed}"] = path
    return paths


def run_all(paths: dict[str, Path], jobs: int) -> dict[str, float]:
    """Run every config (``jobs`` processes at a time, one torch thread each); wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running, walls = list(paths.items()), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            key, path = pending.pop(0)
            log = path.with_suffix(".log").open("w")
            cmd = [sys.executable, "-m", "coordinator.cli", "distill", "--local", "--config",
                   str(path)]
            running[key] = (subprocess.Popen(cmd, stdout=log, stderr=log, env=env),
                            time.perf_counter())
        time.sleep(2)
        for key, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                if proc.returncode != 0:
                    raise SystemExit(f"{key} failed; see {paths[key].with_suffix('.log')}")
                walls[key] = round(time.perf_counter() - t0, 1)
                del running[key]
    return walls


def case_dice(result: Path) -> dict[str, float]:
    """``{site/case: Dice}`` of one run's ``result.json``."""
    res = json.loads(result.read_text())
    return {f"{s}/{c}": float(v["dice"]) for s, cases in res["cases"].items()
            for c, v in cases.items()}


def collect(workdir: Path, labels: list[str], seeds: list[int]
            ) -> dict[str, dict[str, dict[str, float]]]:
    """``{"<label>/<run>": {seed: {site/case: Dice}}}`` over the finished seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, run, seed in itertools.product(labels, RUNS, seeds):
        path = workdir / label / f"seed{seed}" / "runs" / run / "result.json"
        if path.exists():
            out.setdefault(f"{label}/{run}", {})[str(seed)] = case_dice(path)
    return out


def compare(scores: dict[str, dict[str, dict[str, float]]], a: str, b: str
            ) -> dict[str, object]:
    """Paired ``a - b`` over the seeds and cases both have."""
    x, y, seeds, cases = align_scores(scores[a], scores[b])
    c = compare_paired(x, y)
    return {"diff": round(c.mean_diff, 4), "ci95": [round(c.ci_low, 4), round(c.ci_high, 4)],
            "p": round(c.p_value, 4), "significant": c.significant(), "seeds": seeds,
            "n_cases": len(cases)}


def comparisons(scores: dict[str, dict[str, dict[str, float]]], labels: list[str]
                ) -> dict[str, object]:
    """Every pair of variants (later one minus earlier one), per run."""
    out: dict[str, object] = {}
    for run in RUNS:
        for l1, l2 in itertools.combinations(labels, 2):
            a, b = f"{l2}/{run}", f"{l1}/{run}"
            if a in scores and b in scores:
                out[f"{a} - {b}"] = compare(scores, a, b)
    return out


def mean_dice(scores: dict[str, dict[str, dict[str, float]]]) -> dict[str, object]:
    """Per run: mean Dice over seeds and cases, and each seed's mean."""
    out: dict[str, object] = {}
    for key, by_seed in scores.items():
        per_seed = {s: round(sum(v.values()) / len(v), 4) for s, v in by_seed.items()}
        out[key] = {"mean": round(sum(per_seed.values()) / len(per_seed), 4), "seeds": per_seed}
    return out


def main() -> None:
    """Write the variants, run them, compare, write JSON."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--variants", nargs="+", default=["64px_median_exclude", "256px_fill_exclude"],
                   help="<size>px_<spacing rule: median|fill>_<padding: exclude|augment_kd|none>")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--kd-only", action="store_true", help="leave out the no-KD student")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/results/student_sizes.json"))
    p.add_argument("--collect-only", action="store_true",
                   help="only compare the runs already under --workdir (run nothing)")
    args = p.parse_args()
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    base = load_config(args.config, ExperimentConfig).resolve_paths(args.config.parent.resolve())
    paths = write_variants(base, args)
    walls = {} if args.collect_only else run_all(paths, args.jobs)
    scores = collect(args.workdir, args.variants, args.seeds)
    res = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
           "epochs": args.epochs, "seeds": args.seeds, "wall_s": walls,
           "mean_dice": mean_dice(scores), "comparisons": comparisons(scores, args.variants)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(strict_json_dumps(res) + "\n")
    print(json.dumps(res["mean_dice"], indent=1))


if __name__ == "__main__":
    main()
