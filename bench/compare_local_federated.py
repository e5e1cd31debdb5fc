"""Benchmark: the same experiment in-process (``--local``) and over Flower (``simulate``).

Runs the experiment of ``--config`` (the demo's: no-KD and the default multi-teacher student,
then the export) on both transports with the same sites, teachers, proxy set and seed, each into
its own folder, then compares per-case Dice and wall time, with each transport's phases from
its ``run_status.json`` (proxy, connect, teacher outputs, students, peers, report, export) and,
for the federated run, the topology's start-up and tear-down around them. JSON out.

    python -m bench.compare_local_federated --config configs/demo_prostate.toml \\
        --workdir /tmp/cmp --out bench/results/local_vs_federated.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import cast

import yaml

from common.config import load_config
from common.io import strict_json_dumps
from coordinator.distill.config import ExperimentConfig
from coordinator.distill.results_file import CaseScores, ResultRow, read_rows
from coordinator.distill.sites import RunStatus


def write_variant(cfg: ExperimentConfig, out: Path, path: Path) -> Path:
    """``cfg`` with its results in ``out``, as YAML at ``path``."""
    path.write_text(yaml.safe_dump(json.loads(cfg.model_copy(update={"out": out})
                                              .model_dump_json())))
    return path


def run_local(cfg_path: Path) -> tuple[list[ResultRow], float]:
    """In-process run with the export, as ``coordinator distill --local``; rows, seconds."""
    from coordinator.distill.experiment import run_experiment
    from coordinator.export import export_best_multi
    from coordinator.local_sites import LocalSites

    cfg = load_config(cfg_path, ExperimentConfig).resolve_paths(cfg_path.parent)
    t0 = time.perf_counter()
    rows = run_experiment(cfg, LocalSites(cfg), lambda r: export_best_multi(cfg.out, r, cfg))
    return rows, time.perf_counter() - t0


def run_federated(cfg_path: Path, workdir: Path, n_sites: int) -> tuple[list[ResultRow], float]:
    """The compose topology on 127.0.0.1 (TLS, node auth); rows, seconds."""
    from coordinator.topology.simulate import experiment_out, simulate, sites_from_config

    sites = sites_from_config(cfg_path, n_sites)
    t0 = time.perf_counter()
    rc = simulate(sites, cfg_path, workdir, {"timeout": 600.0}, timeout=1800)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"federated run failed (rc={rc}); logs in {workdir / 'logs'}")
    out = experiment_out(cfg_path)
    return read_rows(out), wall


def per_case(rows: list[ResultRow]) -> dict[str, list[float]]:
    """``{run/site: [Dice per case, in test-split order]}`` of the student rows."""
    return {f"{r['run']}/{site}": [float(c["dice"]) for c in cases.values()]
            for r in rows if r.get("cases")
            for site, cases in cast(CaseScores, r["cases"]).items()}


def main() -> None:
    """Run both transports and write the comparison."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("bench/results/local_vs_federated.json"))
    args = p.parse_args()
    base = load_config(args.config, ExperimentConfig).resolve_paths(args.config.parent.resolve())
    args.workdir.mkdir(parents=True, exist_ok=True)
    local_cfg = write_variant(base, args.workdir / "local_out", args.workdir / "local.yaml")
    fed_cfg = write_variant(base, args.workdir / "fed_out", args.workdir / "fed.yaml")
    local, t_local = run_local(local_cfg)
    fed, t_fed = run_federated(fed_cfg, args.workdir / "fed_work", len(base.sites))
    lc, fc = per_case(local), per_case(fed)
    diff = max((abs(a - b) for k in lc for a, b in zip(lc[k], fc.get(k, []), strict=False)),
               default=float("nan"))
    phases = {name: (RunStatus.read(args.workdir / f"{name}_out") or RunStatus(
        transport="local")).phases for name in ("local", "fed")}
    in_app = sum(phases["fed"].values())
    res = {"config": str(args.config), "date": time.strftime("%Y-%m-%d"),
           "local_wall_s": t_local, "federated_wall_s": t_fed,
           "federated_over_local": t_fed / t_local,
           "local_phases_s": phases["local"], "federated_phases_s": phases["fed"],
           "federated_topology_start_and_teardown_s": t_fed - in_app,
           "max_abs_case_dice_diff": diff, "cases_compared": sum(len(v) for v in lc.values())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(strict_json_dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
