"""Benchmark: the same experiment in-process (``--local``) and over Flower (``simulate``).

Runs only the default multi-teacher student (plus nothing else) on both paths with the same
sites, teachers, proxy set and seed, then compares per-site 3D Dice and wall time. JSON out.

    python -m bench.compare_local_federated --config configs/demo_prostate.toml \
        --workdir /tmp/cmp --out bench/results/local_vs_federated.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common.config import load_config
from common.io import strict_json_dumps
from coordinator.distill.config import ExperimentConfig, RunsConfig, WeightingSpec


def write_variant(cfg: ExperimentConfig, out: Path, path: Path) -> Path:
    """Write ``cfg`` with ``out`` and only the default multi-teacher run as TOML-free JSON->YAML."""
    import yaml

    runs = RunsConfig(baseline=False, single_teacher=False,
                      weightings=[WeightingSpec(name="inverse_dice_loss")])
    variant = cfg.model_copy(update={"out": out, "runs": runs})
    path.write_text(yaml.safe_dump(json.loads(variant.model_dump_json())))
    return path


def run_local(cfg_path: Path) -> tuple[dict, float]:
    """In-process run; returns the multi-teacher row and wall seconds."""
    from coordinator.distill.experiment import run_experiment

    cfg = load_config(cfg_path, ExperimentConfig).resolve_paths(cfg_path.parent)
    t0 = time.perf_counter()
    rows = run_experiment(cfg)
    return rows[-1], time.perf_counter() - t0


def run_federated(cfg_path: Path, workdir: Path, n_sites: int) -> tuple[dict, float]:
    """Loopback SuperLink + SuperNodes; returns the multi-teacher row and wall seconds."""
    from coordinator.topology.simulate import experiment_out, simulate, sites_from_config

    sites = sites_from_config(cfg_path, n_sites)
    t0 = time.perf_counter()
    rc = simulate(sites, cfg_path, workdir, {"timeout": 600.0}, timeout=1800, insecure=True)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"federated run failed (rc={rc}); logs in {workdir / 'logs'}")
    res = json.loads((experiment_out(cfg_path) / "federated_results.json").read_text())
    return res["rows"][-1], wall


def main() -> None:
    """Run both paths and write the comparison."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("bench/results/local_vs_federated.json"))
    p.add_argument("--threads", type=int, default=1, help="torch threads for the local run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)  # the federated processes run with 1 thread each
    base = load_config(args.config, ExperimentConfig).resolve_paths(args.config.parent.resolve())
    args.workdir.mkdir(parents=True, exist_ok=True)
    local_cfg = write_variant(base, args.workdir / "local_out", args.workdir / "local.yaml")
    fed_cfg = write_variant(base, args.workdir / "fed_out", args.workdir / "fed.yaml")
    local, t_local = run_local(local_cfg)
    fed, t_fed = run_federated(fed_cfg, args.workdir / "fed_work", len(base.sites))
    diff = {s: abs(local["sites"][s]["dice_mean"] - fed["sites"][s]["dice_mean"])
            for s in local["sites"]}
    res = {"config": str(args.config), "date": time.strftime("%Y-%m-%d"),
           "local_dice": {s: v["dice_mean"] for s, v in local["sites"].items()},
           "federated_dice": {s: v["dice_mean"] for s, v in fed["sites"].items()},
           "max_abs_dice_diff": max(diff.values()), "local_wall_s": t_local,
           "federated_wall_s": t_fed, "federated_over_local": t_fed / t_local}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(strict_json_dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
