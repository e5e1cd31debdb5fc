"""Benchmark: student Dice when one site returns corrupted logits (student level).

On the demo scenario (``configs/demo_prostate.toml``: three phantom prostate sites, cached
teacher outputs, ENet student, the config's epochs) it trains, per weighting rule
(``inverse_dice_loss`` = default, ``equal``) and seed:

* ``clean_2``: the two good sites only (the ``--bad`` site dropped);
* ``random`` / ``inverted``: all three sites, the ``--bad`` site's logits replaced by random
  logits or with the foreground inverted (:mod:`coordinator.distill.corrupt`).

Every student is scored on all three sites' held-out test volumes (3D Dice). Students are
trained by the engine's :func:`coordinator.distill.student.train_student`; runs already
finished under ``--workdir`` (``result.json``) are reused. Writes JSON and a markdown table.

    OMP_NUM_THREADS=1 python -m bench.bench_robustness --config configs/demo_prostate.toml \
        --seeds 0 1 --out bench/results/robustness.json
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from common.config import load_config
from common.io import strict_json_dumps
from coordinator.distill.cache import TeacherCache, materialise
from coordinator.distill.config import ExperimentConfig, WeightingSpec
from coordinator.distill.corrupt import CORRUPTIONS, Corruption, corrupt_teacher
from coordinator.distill.proxy import load_proxy
from coordinator.distill.student import DistillData, StudentRun, train_student
from coordinator.local_sites import load_site_test, local_targets

WEIGHTINGS = ("inverse_dice_loss", "equal")


def load_scenario(config: Path, epochs: int | None = None, beta: float | None = None
                  ) -> tuple[ExperimentConfig, DistillData]:
    """The experiment of ``config`` with its proxy set, cached teacher outputs and test sets.

    ``epochs`` / ``beta`` (KL weight) override the config's values when given.
    """
    cfg = load_config(config, ExperimentConfig).resolve_paths(config.parent.resolve())
    if epochs is not None:
        cfg = cfg.model_copy(update={"student": cfg.student.model_copy(update={"epochs": epochs})})
    if beta is not None:
        cfg = cfg.model_copy(update={"kd": cfg.kd.model_copy(update={"beta": beta})})
    proxy = load_proxy(cfg.proxy, cfg.student.size, cfg.proxy_label)
    targets = materialise(local_targets(cfg, proxy, TeacherCache(cfg.out / "teacher_cache")))
    tests = {s.name: load_site_test(s, cfg.student.size, proxy.plan) for s in cfg.sites}
    return cfg, DistillData(proxy, targets, [s.name for s in cfg.sites], tests)


def train_seed(run: StudentRun, data: DistillData, cfg: ExperimentConfig, seed: int,
               folder: Path) -> dict:
    """Train ``run`` with ``seed`` in ``folder/<run>_seed<seed>``; result plus mean weights."""
    out = folder / f"{run.name}_seed{seed}"
    t0 = time.perf_counter()
    res = train_student(run, data, cfg.model_copy(update={"seed": seed}), out)
    weights = mean_weights(out / "metrics.csv", len(run.teachers))
    print(f"[bench] {run.name} seed {seed}: mean Dice {res['mean_dice']:.4f} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"seed": seed, "mean_dice": res["mean_dice"], "weights": weights,
            "sites": {k: v["dice_mean"] for k, v in res["sites"].items()}}


def mean_weights(metrics: Path, n: int) -> list[float]:
    """Per-teacher weight averaged over all epochs of a run's ``metrics.csv``."""
    with metrics.open() as fh:
        rows = list(csv.DictReader(fh))
    return [statistics.fmean(float(r[f"w{j}"]) for r in rows) for j in range(n)] if n > 1 else []


def summarise_seeds(per_seed: list[dict]) -> dict:
    """Mean over seeds of the mean Dice and each site's Dice, and the seed range."""
    means = [r["mean_dice"] for r in per_seed]
    sites = {s: statistics.fmean(r["sites"][s] for r in per_seed) for s in per_seed[0]["sites"]}
    return {"mean_dice": statistics.fmean(means), "range": max(means) - min(means),
            "sites": sites, "per_seed": per_seed}


def cell(data: DistillData, cfg: ExperimentConfig, run: StudentRun, seeds: list[int],
         folder: Path) -> dict:
    """One table cell: ``run`` trained once per seed, summarised."""
    return summarise_seeds([train_seed(run, data, cfg, s, folder) for s in seeds])


def robustness(cfg: ExperimentConfig, data: DistillData, bad: int, seeds: list[int],
               kinds: list[Corruption], workdir: Path,
               weightings: tuple[str, ...] = WEIGHTINGS) -> list[dict]:
    """Rows (scenario, weighting, summary) for the clean 2-site and the corrupted 3-site runs."""
    assert data.targets is not None
    good = [j for j in range(len(data.site_names)) if j != bad]
    rows = []
    for w in weightings:
        spec = WeightingSpec(name=w)
        clean = StudentRun(f"clean_2_{w}", good, spec)
        rows.append({"scenario": "clean_2", "weighting": w,
                     **cell(data, cfg, clean, seeds, workdir)})
        for kind in kinds:
            bad_data = dataclasses.replace(
                data, targets=corrupt_teacher(materialise(data.targets), bad, kind))
            run = StudentRun(f"{kind}_3_{w}", list(range(len(data.site_names))), spec)
            rows.append({"scenario": kind, "weighting": w,
                         **cell(bad_data, cfg, run, seeds, workdir)})
    return rows


def add_deltas(rows: list[dict]) -> None:
    """Each row's change of mean Dice vs the clean 2-site run of the same weighting (and seed)."""
    clean = {r["weighting"]: r for r in rows if r["scenario"] == "clean_2"}
    for r in rows:
        ref = clean[r["weighting"]]
        r["delta_vs_clean"] = r["mean_dice"] - ref["mean_dice"]
        r["delta_per_seed"] = [a["mean_dice"] - b["mean_dice"]
                               for a, b in zip(r["per_seed"], ref["per_seed"], strict=True)]


def demo_reference(cfg: ExperimentConfig) -> list[dict]:
    """The finished demo's 3-clean-site students (seed ``cfg.seed``), if present."""
    out = []
    for w in WEIGHTINGS:
        path = cfg.out / "runs" / f"multi_{w}" / "result.json"
        if path.exists():
            res = json.loads(path.read_text())
            out.append({"weighting": w, "seed": cfg.seed, "mean_dice": res["mean_dice"],
                        "sites": {k: v["dice_mean"] for k, v in res["sites"].items()}})
    return out


def markdown(res: dict) -> str:
    """The result table (mean over seeds; range = max - min over seeds)."""
    sites = res["sites"]
    head = ["scenario", "weighting", *[f"{s} Dice" for s in sites], "mean Dice", "seed range",
            "change vs clean_2", "w bad site"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["rows"]:
        corrupted = r["scenario"] != "clean_2"
        w_bad = [p["weights"][res["bad_index"]] for p in r["per_seed"] if corrupted]
        cells = [r["scenario"], r["weighting"], *[f"{r['sites'][s]:.3f}" for s in sites],
                 f"{r['mean_dice']:.4f}", f"{r['range']:.4f}", f"{r['delta_vs_clean']:+.4f}",
                 f"{statistics.fmean(w_bad):.3f}" if w_bad else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(res: dict, out: Path) -> None:
    """JSON to ``out`` and the markdown table next to it (``.md``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(strict_json_dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res) + f"wrote {out} and {out.with_suffix('.md')}")


def main() -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("configs/demo_prostate.toml"))
    p.add_argument("--bad", default="site_c", help="site dropped (clean) / corrupted")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--kinds", nargs="+", choices=CORRUPTIONS, default=list(CORRUPTIONS))
    p.add_argument("--weightings", nargs="+", choices=WEIGHTINGS, default=list(WEIGHTINGS))
    p.add_argument("--workdir", type=Path, default=Path("demo_out/bench_robustness"))
    p.add_argument("--out", type=Path, default=Path("bench/results/robustness.json"))
    p.add_argument("--epochs", type=int, default=None, help="override (smoke tests only)")
    p.add_argument("--beta", type=float, default=None, help="override the KL weight [kd] beta "
                   "(runs go to WORKDIR_beta<beta>)")
    args = p.parse_args()
    t0 = time.perf_counter()
    cfg, data = load_scenario(args.config, args.epochs, args.beta)
    bad = data.site_names.index(args.bad)
    work = args.workdir if args.beta is None else args.workdir.with_name(
        f"{args.workdir.name}_beta{args.beta:g}")
    rows = robustness(cfg, data, bad, args.seeds, args.kinds, work, tuple(args.weightings))
    add_deltas(rows)
    write({"config": str(args.config), "bad_site": args.bad, "bad_index": bad,
           "seeds": args.seeds, "epochs": cfg.student.epochs, "sites": data.site_names,
           "kd": cfg.kd.model_dump(),
           "torch_threads": torch.get_num_threads(), "rows": rows,
           "demo_3_clean_sites": demo_reference(cfg) if args.beta is None else [],
           "wall_seconds": time.perf_counter() - t0}, args.out)


if __name__ == "__main__":
    main()
