"""The experiment pipeline, one for both transports: the paper's Tables 3-5.

:func:`run_experiment` plans the runs, gets every live site's teacher outputs on the proxy set,
trains each student, has it scored on every site's held-out test cases, writes the report
(``results.md/.csv/.png``, paired statistics, costs, trade-off plot) and calls ``finish`` (the
export). Where the teachers live is the :class:`~coordinator.distill.sites.Sites` adapter:
in-process site folders (``distill --local``) or Flower's Grid (the ``ServerApp``). How the run
ended, and what became of each expected site, is ``run_status.json``
(:class:`~coordinator.distill.sites.RunStatus`), written even when the run fails.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

from common.io import atomic_write_json
from common.lock import hold_out_folder
from coordinator.distill.config import ExperimentConfig, row_config
from coordinator.distill.dataset import load_proxy_on_disk
from coordinator.distill.memory import guard_experiment
from coordinator.distill.proxy import canvas_note
from coordinator.distill.repeats import train_repeats
from coordinator.distill.report import write_results
from coordinator.distill.results_file import ResultRow, write_rows
from coordinator.distill.sites import Sites
from coordinator.distill.student import DistillData, StudentRun
from coordinator.distill.teacher_check import check_teachers, plan_line

log = logging.getLogger(__name__)

#: Called with the result rows once the report is written (the export of the default student).
Finish = Callable[[list[ResultRow]], object]


def plan_runs(cfg: ExperimentConfig, names: list[str]) -> list[StudentRun]:
    """No-KD baseline, one run per single teacher of ``names`` (the live sites, in the
    config's order), one multi-teacher run per weighting rule (each trained with its row's
    ``kd`` / ``student`` overrides: :func:`~coordinator.distill.config.row_config`)."""
    runs = [StudentRun("student_only")] if cfg.runs.baseline else []
    if cfg.runs.single_teacher:
        runs += [StudentRun(f"single_{n}", [j]) for j, n in enumerate(names)]
    every = list(range(len(names)))
    return runs + [StudentRun(f"multi_{w.label}", every, w) for w in cfg.runs.weightings]


def run_experiment(cfg: ExperimentConfig, sites: Sites, finish: Finish | None = None
                   ) -> list[ResultRow]:
    """The whole experiment over ``sites``; the result rows (also on disk).

    ``run_status.json`` says how it ended: ``ok`` only when the report was written and
    ``finish`` (the export) succeeded; otherwise the one-line reason. One writer per out
    folder: a folder another live run holds is refused (:func:`common.lock.hold_out_folder`)."""
    with hold_out_folder(cfg.out):
        return _run(cfg, sites, finish)


def _run(cfg: ExperimentConfig, sites: Sites, finish: Finish | None) -> list[ResultRow]:
    t0, status = time.perf_counter(), sites.status
    status.ok, status.reason = False, ""
    try:
        rows = _pipeline(cfg, sites, t0)
        if finish is not None:
            t1 = time.perf_counter()
            finish(rows)
            status.phases["export"] = time.perf_counter() - t1
        status.ok = True
        return rows
    except BaseException as exc:
        status.reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise
    finally:
        status.seconds = time.perf_counter() - t0
        status.write(cfg.out)
        for line in status.summary_lines():
            log.info("[distill] site %s", line)


class _Phases:
    """Seconds spent in each phase of the pipeline, logged and kept in the run status."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into, self.t = into, time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = now - self.t
        log.info("[distill] phase %s: %.1f s", name, now - self.t)
        self.t = now


def train_rows(runs: list[StudentRun], cfg: ExperimentConfig, sites: Sites,
               data: DistillData, out: Path) -> list[ResultRow]:
    """Train and score every run (its repeats included) with its row's config
    (:func:`~coordinator.distill.config.row_config`); a row with its own student model is
    scored by a scorer made for that model (a federated site rebuilds the student by name)."""
    scorers = {cfg.student.model: data.scorer}
    rows: list[ResultRow] = []
    for k, run in enumerate(runs):
        log.info("[distill] run %s (%d/%d)", run.name, k + 1, len(runs))
        t_run = time.perf_counter()
        rcfg = row_config(cfg, run.weighting)
        model = rcfg.student.model
        if model not in scorers:
            scorers[model] = sites.scorer(rcfg, data.proxy)
        row = train_repeats(run, dataclasses.replace(data, scorer=scorers[model]), rcfg,
                            out / "runs" / run.name)
        rows.append({**row, "wall_seconds": time.perf_counter() - t_run})
    return rows


def _left_out(cfg: ExperimentConfig) -> list[str]:
    """The report's note on the rows ``--rows`` left out (:mod:`coordinator.distill.rows`)."""
    if not cfg.runs.left_out:
        return []
    return [f"{', '.join(cfg.runs.left_out)} (left out with --rows; a later run without it "
            "adds them and reuses every finished run)"]


def _pipeline(cfg: ExperimentConfig, sites: Sites, t0: float) -> list[ResultRow]:
    phase = _Phases(sites.status.phases)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.model_dump(mode="json"))
    proxy = load_proxy_on_disk(cfg.proxy, cfg.student.size, cfg.proxy_label, out / "proxy",
                               fill=cfg.student.fills_canvas)
    guard_experiment(cfg, len(proxy), sites=sites.expected,  # refuse now, not OOM later
                     query=sites.guard_query)
    phase.done("proxy")
    val_dice = sites.connect(cfg)
    phase.done("connect")
    log.info("[distill] student plan: %s", plan_line(proxy.plan))
    if (note := canvas_note(proxy, cfg.kd.padding == "exclude")) is not None:
        log.warning("[distill] %s", note)
    names, targets = sites.teacher_outputs(cfg, proxy)
    check_teachers(names, targets, proxy.masks, val_dice, cfg.teacher_proxy_dice_floor)
    phase.done("teacher_outputs")
    scorer = sites.scorer(cfg, proxy)  # loads the local test sets (sites.site_tests)
    data = DistillData(proxy, targets, names, sites.site_tests, sites.teacher_ids,
                       scorer=scorer)
    rows = sites.teacher_rows(cfg) if cfg.runs.teacher_rows else []
    phase.done("teacher_rows")
    rows += train_rows(plan_runs(cfg, names), cfg, sites, data, out)
    phase.done("students")
    rows = sites.peer_rows(cfg, data, rows)
    phase.done("peers")
    write_rows(out, rows)
    write_results(rows, cfg, out, time.perf_counter() - t0, status=sites.status,
                  not_run=sites.not_run(cfg) + _left_out(cfg))
    phase.done("report")
    return rows
