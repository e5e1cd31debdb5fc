"""``coordinator distill --local``: the paper's Tables 3-5 on one machine.

Teachers are loaded from the sites' run folders and queried in-process through the very same
``site_node.teacher_outputs`` function a federated site runs; their outputs are cached on disk.
"""

from __future__ import annotations

import time

from common.data.layout import discover_dataset
from common.data.slices import Volume, load_volumes
from common.data.split import load_split
from common.evaluate import evaluate_volumes
from common.io import atomic_write_json
from common.kd.batching import stack_teachers
from common.kd.targets import TeacherTargets
from common.metrics import summarise
from common.models.checkpoint import load_model
from common.training import select_device
from coordinator.distill.cache import TeacherCache
from coordinator.distill.config import ExperimentConfig, SiteSpec
from coordinator.distill.proxy import ProxySet, load_proxy
from coordinator.distill.repeats import train_repeats
from coordinator.distill.report import write_results
from coordinator.distill.student import DistillData, StudentRun
from coordinator.export import export_best_multi
from site_node.teacher_outputs import teacher_outputs


def load_site_test(site: SiteSpec, size: int) -> list[Volume]:
    """The site's held-out test volumes (case ids from the teacher run's ``split.json``)."""
    split = load_split(site.teacher_dir / "split.json")
    return load_volumes(discover_dataset(site.data), split.test, size)


def local_targets(cfg: ExperimentConfig, proxy: ProxySet, cache: TeacherCache) -> TeacherTargets:
    """Every site's teacher outputs on the proxy set, from the cache or computed in-process."""
    dev = select_device(cfg.student.device)
    parts = []
    for site in cfg.sites:
        t = cache.get(site.name, proxy.digest)
        if t is None:
            model, _ = load_model(site.teacher_dir / "best.pt")
            t = teacher_outputs(model, proxy.images, proxy.masks, dev,
                                cfg.student.teacher_batch_size, cfg.kd.at_form, cfg.kd.at_p)
            cache.put(site.name, proxy.digest, t)
            print(f"[distill] {site.name}: teacher outputs for {len(proxy)} proxy slices cached")
            t = cache.get(site.name, proxy.digest)  # fp16-rounded, as a rerun and the wire see
        assert t is not None
        parts.append(t)
    return stack_teachers(parts)


def teacher_rows(cfg: ExperimentConfig, tests: dict[str, list[Volume]]) -> list[dict]:
    """Each teacher scored on every site's test set (top block of the paper's Table 3)."""
    dev = select_device(cfg.student.device)
    rows = []
    for site in cfg.sites:
        model, _ = load_model(site.teacher_dir / "best.pt", dev)
        scores = {name: summarise(evaluate_volumes(model.to(dev), vols, dev)[0])
                  for name, vols in tests.items()}
        mean = sum(s["dice_mean"] for s in scores.values()) / len(scores)
        rows.append({"run": f"teacher_{site.name}", "teachers": [site.name], "weighting": None,
                     "sites": scores, "mean_dice": mean, "arch": _arch(site)})
    return rows


def _arch(site: SiteSpec) -> str:
    import json

    card = site.teacher_dir / "teacher.json"
    return str(json.loads(card.read_text())["architecture"]) if card.exists() else "?"


def plan_runs(cfg: ExperimentConfig) -> list[StudentRun]:
    """Baseline, one run per single teacher, one multi-teacher run per weighting rule."""
    runs = [StudentRun("student_only")] if cfg.runs.baseline else []
    if cfg.runs.single_teacher:
        runs += [StudentRun(f"single_{s.name}", [j]) for j, s in enumerate(cfg.sites)]
    every = list(range(len(cfg.sites)))
    runs += [StudentRun(f"multi_{w.label}", every, w) for w in cfg.runs.weightings]
    return runs


def run_experiment(cfg: ExperimentConfig) -> list[dict]:
    """Run every planned student, then write results.csv / results.md / results.png."""
    t0 = time.perf_counter()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.model_dump(mode="json"))
    proxy = load_proxy(cfg.proxy, cfg.student.size)
    targets = local_targets(cfg, proxy, TeacherCache(out / "teacher_cache"))
    tests = {s.name: load_site_test(s, cfg.student.size) for s in cfg.sites}
    data = DistillData(proxy, targets, [s.name for s in cfg.sites], tests)
    rows = teacher_rows(cfg, tests)
    for run in plan_runs(cfg):
        print(f"[distill] run {run.name}")
        rows.append(train_repeats(run, data, cfg, out / "runs" / run.name))
    write_results(rows, cfg, out, time.perf_counter() - t0)
    export_best_multi(out, rows, cfg)
    return rows
