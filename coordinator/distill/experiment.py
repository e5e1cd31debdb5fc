"""``coordinator distill --local``: the paper's Tables 3-5 on one machine.

Teachers are loaded from the sites' run folders and queried in-process through the very same
``common.kd.teacher_outputs`` function a federated site runs; their outputs are cached on disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial

from common.data.plan import Plan
from common.data.slices import Volume
from common.data.test_split import load_test_split, site_plan
from common.evaluate import evaluate_volumes
from common.io import atomic_write_json
from common.kd.plan_bridge import bridged_teacher_outputs
from common.metrics import summarise
from common.models.checkpoint import load_model
from common.training import select_device
from coordinator.distill.cache import CachedTargets, TeacherCache, build_chunk
from coordinator.distill.config import ExperimentConfig, SiteSpec
from coordinator.distill.dataset import load_proxy_on_disk
from coordinator.distill.identity import cache_key, teacher_digest
from coordinator.distill.memory import guard_experiment
from coordinator.distill.proxy import ProxySet, canvas_note
from coordinator.distill.repeats import train_repeats
from coordinator.distill.report import write_results
from coordinator.distill.student import DistillData, StudentRun
from coordinator.distill.teacher_check import check_teachers, plan_line

log = logging.getLogger(__name__)


def load_site_test(site: SiteSpec, size: int, plan: Plan | None = None) -> list[Volume]:
    """The site's held-out test volumes (case ids from the teacher run's ``split.json``),
    prepared with ``plan`` (a student's) or else the site teacher's own plan."""
    return load_test_split(site.data, site.teacher_dir, size, plan)


def local_targets(cfg: ExperimentConfig, proxy: ProxySet, cache: TeacherCache) -> CachedTargets:
    """Every site's teacher outputs on the proxy set, from the cache or computed in-process,
    each teacher in its own plan and mapped back to the proxy's (student's) grid
    (:mod:`common.kd.plan_bridge`, as a federated site does)."""
    dev = select_device(cfg.student.device)
    parts = []
    log.info("[distill] student plan: %s", plan_line(proxy.plan))
    if (note := canvas_note(proxy, cfg.kd.padding == "exclude")) is not None:
        log.warning("[distill] %s", note)
    for site in cfg.sites:
        taps = cfg.kd.feature_taps
        at_tag = cfg.kd.at_form if taps == "emkd" else f"{cfg.kd.at_form}+{taps}"
        key = cache_key(proxy.digest, teacher_digest(site.teacher_dir), f"{at_tag}+bridge",
                        cfg.kd.at_p)
        plan = site_plan(site.teacher_dir)
        log.info("[distill] %s: teacher plan: %s", site.name, plan_line(plan))
        t = cache.open(site.name, key)  # on disk, read per batch (issue 14)
        if t is None:
            model, _ = load_model(site.teacher_dir / "best.pt")
            tbs = cfg.student.teacher_batch_size  # chunks of whole teacher batches: same outputs
            ask = partial(bridged_teacher_outputs, model, device=dev, query=proxy.plan,
                          teacher=plan, batch_size=tbs, at_form=cfg.kd.at_form, p=cfg.kd.at_p,
                          taps=taps)
            cache.build_answers(site.name, key, proxy.images, proxy.masks, ask,
                                chunk=build_chunk(proxy.images.shape[-1], tbs))
            log.info("[distill] %s: teacher outputs for %d proxy slices cached", site.name,
                     len(proxy))
            t = cache.open(site.name, key)  # fp16-rounded, as a rerun and the wire see
        assert t is not None
        parts.append(t)
    return CachedTargets.stack(parts)


def teacher_rows(cfg: ExperimentConfig) -> list[dict]:
    """Each teacher scored on every site's test set (top block of the paper's Table 3), the
    test cases prepared with that teacher's own plan (the grid it was trained on)."""
    dev = select_device(cfg.student.device)
    rows = []
    for site in cfg.sites:
        model, _ = load_model(site.teacher_dir / "best.pt", dev)
        plan = site_plan(site.teacher_dir)
        tests = {s.name: load_site_test(s, cfg.student.size, plan) for s in cfg.sites}
        scores = {name: summarise(evaluate_volumes(model.to(dev), vols, dev)[0])
                  for name, vols in tests.items()}
        mean = sum(s["dice_mean"] for s in scores.values()) / len(scores)
        rows.append({"run": f"teacher_{site.name}", "teachers": [site.name], "weighting": None,
                     "sites": scores, "mean_dice": mean, "arch": _arch(site)})
    return rows


def _card(site: SiteSpec) -> dict:
    """The site teacher's ``teacher.json`` ({} when there is none)."""
    import json

    card = site.teacher_dir / "teacher.json"
    return json.loads(card.read_text()) if card.exists() else {}


def _arch(site: SiteSpec) -> str:
    return str(_card(site).get("architecture", "?"))


def plan_runs(cfg: ExperimentConfig) -> list[StudentRun]:
    """Baseline, one run per single teacher, one multi-teacher run per weighting rule."""
    runs = [StudentRun("student_only")] if cfg.runs.baseline else []
    if cfg.runs.single_teacher:
        runs += [StudentRun(f"single_{s.name}", [j]) for j, s in enumerate(cfg.sites)]
    every = list(range(len(cfg.sites)))
    runs += [StudentRun(f"multi_{w.label}", every, w) for w in cfg.runs.weightings]
    return runs


#: Extra rows after the student rows: ``(cfg, data, rows so far) -> all rows`` (the peer
#: baselines and cost columns of :func:`coordinator.baselines.rows.baseline_rows`).
RowHook = Callable[[ExperimentConfig, DistillData, list[dict]], list[dict]]


def run_experiment(cfg: ExperimentConfig, extra: RowHook | None = None) -> list[dict]:
    """Run every planned student (then ``extra``), write results.csv / results.md / .png.

    Each student row records its ``wall_seconds`` (all its seeds). Exporting the default
    student is the caller's step (``coordinator distill --local`` does it with
    :func:`coordinator.export.export_best_multi`, as the federated ServerApp does), so the
    distillation engine does not import the export package."""
    t0 = time.perf_counter()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.model_dump(mode="json"))
    proxy = load_proxy_on_disk(cfg.proxy, cfg.student.size, cfg.proxy_label, out / "proxy",
                               fill=cfg.student.fills_canvas)
    guard_experiment(cfg, len(proxy))  # refuse now rather than be OOM-killed (issue 14)
    targets = local_targets(cfg, proxy, TeacherCache(out / "teacher_cache"))
    check_teachers([s.name for s in cfg.sites], targets, proxy.masks,
                   {s.name: _card(s).get("val_dice") for s in cfg.sites},
                   cfg.teacher_proxy_dice_floor)
    tests = {s.name: load_site_test(s, cfg.student.size, proxy.plan) for s in cfg.sites}
    data = DistillData(proxy, targets, [s.name for s in cfg.sites], tests,
                       [teacher_digest(s.teacher_dir) for s in cfg.sites])
    rows = teacher_rows(cfg)
    for run in plan_runs(cfg):
        log.info("[distill] run %s", run.name)
        t_run = time.perf_counter()
        row = train_repeats(run, data, cfg, out / "runs" / run.name)
        rows.append({**row, "wall_seconds": time.perf_counter() - t_run})
    rows = extra(cfg, data, rows) if extra else rows
    write_results(rows, cfg, out, time.perf_counter() - t0)
    return rows
