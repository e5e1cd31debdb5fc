"""Repeated student runs over seeds (``ExperimentConfig.repeats``) and their mean row.

Single student runs on a small proxy set differ by 0.01-0.02 mean Dice between seeds, so a
table that ranks weighting rules needs several seeds. With ``repeats = R`` every run is trained
with seeds ``seed .. seed+R-1`` in ``runs/<run>/seed<s>/``; the table row is the mean over seeds
(per-site metrics and mean Dice) plus ``mean_dice_sd`` (sample standard deviation), the
per-seed values and each seed's per-case scores (``seed_cases``, for the paired comparisons of
:mod:`coordinator.distill.report`). The mean row is also written to ``runs/<run>/summary.json``.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, cast

from common.io import atomic_write_json
from coordinator.distill.config import ExperimentConfig
from coordinator.distill.results_file import ResultRow
from coordinator.distill.student import DistillData, StudentRun, train_student

METRIC_KEYS = ("dice_mean", "voe_mean", "hd95_mean")


def seed_folders(folder: Path, cfg: ExperimentConfig) -> list[tuple[int, Path]]:
    """``(seed, run folder)`` per repeat; one repeat keeps the plain ``folder``."""
    if cfg.repeats == 1:
        return [(cfg.seed, folder)]
    return [(cfg.seed + k, folder / f"seed{cfg.seed + k}") for k in range(cfg.repeats)]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]  # HD95 is NaN when a prediction is empty
    return sum(finite) / len(finite) if finite else float("nan")


def seed_cases(rows: list[ResultRow], seeds: list[int]) -> dict[str, Any]:
    """Per-case scores of each seed's row, ``{str(seed): {site: {case: {dice, voe, hd95}}}}``
    (seeds whose row has none, e.g. scored by federated sites, are left out)."""
    return {str(s): r["cases"] for s, r in zip(seeds, rows, strict=True) if r.get("cases")}


def mean_row(rows: list[ResultRow], seeds: list[int], checkpoint_dir: Path) -> ResultRow:
    """The mean of per-seed result rows of one run (same run, teachers and sites)."""
    sites = {site: {k: _mean([r["sites"][site].get(k, float("nan")) for r in rows])
                    for k in METRIC_KEYS} for site in rows[0]["sites"]}
    dice = [float(cast(float, r["mean_dice"])) for r in rows]
    row = {"run": rows[0]["run"], "teachers": rows[0]["teachers"],
           **{k: rows[0][k] for k in ("student",) if k in rows[0]},
           "weighting": rows[0]["weighting"], "sites": sites, "mean_dice": _mean(dice),
           "mean_dice_sd": _sd(dice),
           "seeds": seeds, "seed_mean_dice": dice, "seed_cases": seed_cases(rows, seeds),
           "train_seconds": sum(float(r.get("train_seconds", 0.0)) for r in rows),
           "checkpoint_dir": str(checkpoint_dir), **_proxy_mean(rows)}
    return cast(ResultRow, row)


def _sd(values: list[float]) -> float:
    """Sample sd of the finite values (a seed no site scored is NaN and left out); 0.0 with
    fewer than two."""
    finite = [v for v in values if v == v]
    return statistics.stdev(finite) if len(finite) > 1 else 0.0


def _proxy_mean(rows: list[ResultRow]) -> dict:
    """``{"proxy": mean over seeds}`` when every seed was scored on the proxy (no site test
    case: :mod:`coordinator.distill.proxy_score`), ``{}`` otherwise."""
    if not all(r.get("proxy") for r in rows):
        return {}
    return {"proxy": {k: _mean([float(r["proxy"].get(k, float("nan"))) for r in rows])
                      for k in METRIC_KEYS}}


def train_repeats(run: StudentRun, data: DistillData, cfg: ExperimentConfig,
                  folder: Path) -> ResultRow:
    """Train ``run`` once per seed (each resumable, scored by ``data.scorer``) and return its
    (mean) result row."""
    plan = seed_folders(folder, cfg)
    rows = []
    for seed, sub in plan:
        rows.append(train_student(run, data, cfg.model_copy(update={"seed": seed}), sub))
    if len(rows) == 1:
        return rows[0]
    row = mean_row(rows, [seed for seed, _ in plan], plan[0][1])
    atomic_write_json(folder / "summary.json", row)
    return row
