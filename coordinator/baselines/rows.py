"""The baseline rows (``local_only``, ``pooled``, ``fedavg``, ``fedprox``, ``fedbn``) and every
row's ``cost``.

:func:`baseline_rows` is the hook :func:`coordinator.distill.experiment.run_experiment` calls
after the student rows: it adds a ``cost`` to each student row (the MT-KD query exchange the
federated path would make, measured from the same encoded payloads) and appends the baseline
rows, trained with the student rows' architecture, config, seeds and repeats and scored on the
same native-resolution test sets (per-case scores kept, so the paired statistics cover them).
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any, cast

import torch

from common.fedbn import without_bn
from common.io import atomic_write_json
from common.training import seed_everything, select_device
from coordinator.baselines.costs import PayloadLog, cost_summary, pooled_log, query_log
from coordinator.baselines.data import concat_sets, site_train_set
from coordinator.baselines.fedavg import (
    SiteClient,
    fedavg_config,
    local_exchange,
    peer_label,
    peer_left,
    peer_specs,
    run_fedavg,
)
from coordinator.baselines.fedbn_scores import fedbn_note, fedbn_site_scores
from coordinator.distill.config import ExperimentConfig, FedAvgSpec, FedBNSpec
from coordinator.distill.identity import code_version, digest_of
from coordinator.distill.proxy import ProxySet
from coordinator.distill.repeats import mean_row, seed_folders, train_repeats
from coordinator.distill.results_file import ResultRow
from coordinator.distill.student import (
    DistillData,
    StudentRun,
    _load_result,
    _model,
    _site_scores,
)

log = logging.getLogger(__name__)
LOCAL = "--local: coordinator read the site folders"
POOLED_NOTE = "not federated: data pooled"


def _dataset(data: DistillData, train: ProxySet) -> DistillData:
    """``data`` with ``train`` as the training slices and no teacher targets."""
    return DistillData(train, None, data.site_names, data.site_tests, None)


def _train_seconds(row: ResultRow) -> float:
    """Training wall time of a row over all its seeds, as recorded when it was trained (a
    rerun that reuses finished runs keeps it), else the measured wall time of this call."""
    return float(row.get("train_seconds") or row.get("wall_seconds") or 0.0)


def _timed_cost(row: ResultRow, plog: PayloadLog, sites: list[str], left: str, t0: float
                ) -> ResultRow:
    row["wall_seconds"] = time.perf_counter() - t0
    row["cost"] = cost_summary(plog, sites, left, _train_seconds(row), LOCAL)
    return row


def local_only_rows(cfg: ExperimentConfig, data: DistillData, sets: dict[str, ProxySet]
                    ) -> list[ResultRow]:
    """One student per site on its own training split (scored on every site), then the
    ``local_only`` row: each site's own student on its own test set."""
    rows = {}
    for site, train in sets.items():
        t0 = time.perf_counter()
        row = train_repeats(StudentRun(f"local_only_{site}"), _dataset(data, train), cfg,
                            cfg.out / "runs" / f"local_only_{site}")
        row["weighting"] = f"{site}'s data only"
        rows[site] = _timed_cost(row, PayloadLog(), data.site_names, "nothing", t0)
    agg = own_site_row(rows)
    agg["cost"] = cost_summary(PayloadLog(), data.site_names, "nothing",
                               _train_seconds(agg), LOCAL)
    return [*rows.values(), agg]


def _seed_cases(row: ResultRow) -> dict[str, Any]:
    return row.get("seed_cases") or {str(row.get("seed", "-")): row.get("cases", {})}


def own_site_row(rows: dict[str, ResultRow]) -> ResultRow:
    """``local_only``: site ``s``'s column is the score of ``s``'s own student on ``s``'s test
    set (what each hospital gets without any collaboration); per-case scores kept per seed."""
    sites = {s: r["sites"][s] for s, r in rows.items()}
    per_seed = {seed: {s: _seed_cases(r)[seed][s] for s, r in rows.items()}
                for seed in _seed_cases(next(iter(rows.values())))}
    seed_dice = [statistics.fmean(statistics.fmean(float(c["dice"]) for c in cases.values())
                                  for cases in by_site.values()) for by_site in per_seed.values()]
    row: dict[str, Any] = {
        "run": "local_only", "teachers": [], "weighting": "own site's student",
        "sites": sites, "mean_dice": statistics.fmean(v["dice_mean"] for v in sites.values()),
        "wall_seconds": sum(float(r["wall_seconds"]) for r in rows.values()),
        "train_seconds": sum(_train_seconds(r) for r in rows.values())}
    if len(per_seed) > 1:
        row.update(seeds=[int(s) for s in per_seed], seed_cases=per_seed,
                   seed_mean_dice=seed_dice, mean_dice_sd=statistics.stdev(seed_dice))
    else:
        row.update(seed=next(iter(per_seed)), cases=next(iter(per_seed.values())))
    return cast(ResultRow, row)


def pooled_row(cfg: ExperimentConfig, data: DistillData, sets: dict[str, ProxySet]) -> ResultRow:
    """One student on every site's training split plus the proxy set (a reference only)."""
    t0 = time.perf_counter()
    pool = concat_sets([*sets.values(), data.proxy], data.proxy.plan)
    row = train_repeats(StudentRun("pooled"), _dataset(data, pool), cfg,
                        cfg.out / "runs" / "pooled")
    row["weighting"] = POOLED_NOTE
    plog = pooled_log({s: (p.images, p.masks) for s, p in sets.items()})
    return _timed_cost(row, plog, data.site_names, "raw data (pooled)", t0)


def fedavg_row(cfg: ExperimentConfig, data: DistillData, sets: dict[str, ProxySet],
               run: str = "fedavg", spec: FedAvgSpec | None = None) -> ResultRow:
    """The FedAvg-family peer ``run`` (``spec``, default ``[runs.fedavg]``: Flower's FedAvg,
    FedProx or FedBN) over the same student, repeated over the experiment's seeds."""
    spec = spec or cfg.runs.fedavg
    assert spec is not None
    t0 = time.perf_counter()
    folder = cfg.out / "runs" / run
    plan = seed_folders(folder, cfg)
    results = [fedavg_seed(cfg, data, sets, seed, sub, run, spec) for seed, sub in plan]
    row = results[0] if len(results) == 1 else mean_row(results, [s for s, _ in plan], folder)
    plog = PayloadLog.read(plan[0][1] / "payloads.jsonl")  # one training run (first seed)
    row["weighting"] = peer_label(spec)
    return _timed_cost(row, plog, data.site_names, peer_left(spec), t0)


def _fingerprint(cfg: ExperimentConfig, sets: dict[str, ProxySet], seed: int,
                 run: str = "fedavg", spec: FedAvgSpec | None = None) -> str:
    spec = spec or cfg.runs.fedavg
    return digest_of({run: spec.model_dump() if spec else None, "seed": seed,
                      "code": code_version(),
                      "student": cfg.student.model_dump(mode="json"),
                      "kd": cfg.kd.model_dump(mode="json"),
                      "sites": {s: p.digest for s, p in sets.items()}})


def fedavg_seed(cfg: ExperimentConfig, data: DistillData, sets: dict[str, ProxySet],
                seed: int, out: Path, run: str = "fedavg", spec: FedAvgSpec | None = None
                ) -> ResultRow:
    """One run of the peer ``run`` (``spec``) with ``seed``, scored per site (reused when
    ``out/result.json`` holds the same fingerprint); writes ``payloads.jsonl`` and
    ``result.json``. FedBN: each site's BatchNorm state is kept under
    ``out/site_state/<site>`` (as a site keeps it in its state dir) and each site's test cases
    are scored with the shared weights plus that site's BatchNorm."""
    spec = spec or cfg.runs.fedavg
    assert spec is not None
    fp, done = _fingerprint(cfg, sets, seed, run, spec), out / "result.json"
    if done.exists() and _load_result(done).get("identity") == fp:
        return _load_result(done)
    dev = select_device(cfg.student.device)
    seed_everything(seed)
    model = _model(cfg, dev)
    local_bn = isinstance(spec, FedBNSpec)
    states = out / "site_state"
    clients = [SiteClient(s, p, states / s if local_bn else None) for s, p in sets.items()]
    plog = PayloadLog()
    plan = data.proxy.plan.model_dump_json() if data.proxy.plan else ""
    t0 = time.perf_counter()
    init = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state = run_fedavg(local_exchange(clients, dev), {k + 1: c.name for k, c in
                                                      enumerate(clients)},
                       without_bn(init, cfg.student.model) if local_bn else init,
                       spec, fedavg_config(cfg, plan, seed, spec=spec), plog,
                       desc=f"[distill] {run} seed {seed}: rounds")
    out.mkdir(parents=True, exist_ok=True)
    plog.write(out / "payloads.jsonl")
    if local_bn:
        sites, cases = fedbn_site_scores(model, state, data, dev, out, states, seed)
    else:
        model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        sites, cases = _site_scores(model.eval(), data, dev, out)
    result: dict[str, Any] = {"run": run, "teachers": [], "weighting": None, "sites": sites,
              "seed": seed, "cases": cases, "identity": fp,
              "train_seconds": time.perf_counter() - t0,
              "mean_dice": _mean_scored(sites), **fedbn_note(local_bn)}
    atomic_write_json(done, result)
    return cast(ResultRow, result)


def _mean_scored(sites: dict[str, dict]) -> float:
    """Mean ``dice_mean`` of the sites that were scored (FedBN: not a site without BN)."""
    vals = [float(v["dice_mean"]) for v in sites.values() if "dice_mean" in v]
    return sum(vals) / max(len(vals), 1)


def student_cost(row: ResultRow, cfg: ExperimentConfig, data: DistillData, where: str = LOCAL
                 ) -> dict[str, Any]:
    """A student row's cost: the query exchange with its teachers' sites (none for no-KD)."""
    names = data.site_names
    teachers = [names.index(t) for t in row.get("teachers", [])]
    if not teachers or data.targets is None:
        plog, left = PayloadLog(), "nothing"
    else:
        plog, left = query_log(data.proxy, data.targets, names, teachers, cfg), \
            "outputs on proxy"
    return cost_summary(plog, names, left, _train_seconds(row), where)


def baseline_rows(cfg: ExperimentConfig, data: DistillData, rows: list[ResultRow]
                  ) -> list[ResultRow]:
    """``rows`` with a ``cost`` on every student row, then the enabled baseline rows."""
    out: list[ResultRow] = [
        r if r["run"].startswith("teacher_") else {**r, "cost": student_cost(r, cfg, data)}
        for r in rows]
    r = cfg.runs
    if not (r.local_only or r.pooled or peer_specs(cfg)):
        return out
    plan = data.proxy.plan
    sets = {s.name: site_train_set(s, cfg.student.size, plan) for s in cfg.sites}
    if r.local_only:
        out += local_only_rows(cfg, data, sets)
    if r.pooled:
        out.append(pooled_row(cfg, data, sets))
    for run, spec in peer_specs(cfg):
        log.info("[distill] run %s (%d rounds x %d local epochs)", run, spec.rounds,
                 spec.local_epochs)
        out.append(fedavg_row(cfg, data, sets, run, spec))
    return out
