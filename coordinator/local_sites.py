"""``coordinator distill --local``: the sites' folders read in-process (:class:`LocalSites`).

The :class:`~coordinator.distill.sites.Sites` adapter for one machine that can read every
site's data and teacher folder: each teacher is queried in-process through the very function a
federated site runs (:func:`common.kd.plan_bridge.bridged_teacher_outputs`, the teacher in its
own plan, outputs mapped to the student's grid), its outputs cached on disk as fp16 (what the
wire carries); students are scored on the sites' held-out test cases here; the peer baselines
that need the sites' training data (``local_only``, ``pooled``, FedAvg) run here too.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Literal

from common.data.plan import Plan
from common.data.slices import Volume
from common.data.teacher_card import TeacherCard
from common.data.test_split import load_test_split, site_plan
from common.kd.plan_bridge import bridged_teacher_outputs
from common.models.checkpoint import load_model
from common.training import select_device
from coordinator.distill.cache import CachedTargets, TeacherCache, build_chunk
from coordinator.distill.config import ExperimentConfig, SiteSpec
from coordinator.distill.identity import cache_key, teacher_digest
from coordinator.distill.proxy import ProxySet
from coordinator.distill.results_file import ResultRow
from coordinator.distill.sites import (
    RunStatus,
    Scorer,
    SiteReport,
    expected_roster,
    required_sites,
)
from coordinator.distill.student import DistillData, _site_scores
from coordinator.distill.teacher_check import plan_line

log = logging.getLogger(__name__)


def load_site_test(site: SiteSpec, size: int, plan: Plan | None = None) -> list[Volume]:
    """The site's held-out test volumes (case ids from the teacher run's ``split.json``),
    prepared with ``plan`` (a student's) or else the site teacher's own plan."""
    return load_test_split(site.data, site.teacher_dir, size, plan)


def _card(site: SiteSpec) -> TeacherCard | None:
    """The site teacher's ``teacher.json`` card (None when there is none)."""
    return TeacherCard.read(site.teacher_dir, missing_ok=True)


def local_targets(cfg: ExperimentConfig, proxy: ProxySet, cache: TeacherCache) -> CachedTargets:
    """Every site's teacher outputs on the proxy set, from the cache or computed in-process,
    each teacher in its own plan and mapped back to the proxy's (student's) grid."""
    dev = select_device(cfg.student.device)
    parts = []
    for site in cfg.sites:
        taps = cfg.kd.feature_taps
        at_tag = cfg.kd.at_form if taps == "emkd" else f"{cfg.kd.at_form}+{taps}"
        whole = cfg.kd.teacher_field == "whole"
        key = cache_key(proxy.digest, teacher_digest(site.teacher_dir),
                        f"{at_tag}+bridge" + ("+whole" if whole else ""), cfg.kd.at_p)
        plan = site_plan(site.teacher_dir)
        log.info("[distill] %s: teacher plan: %s", site.name, plan_line(plan))
        t = cache.open(site.name, key)
        if t is None:
            model, _ = load_model(site.teacher_dir / "best.pt")
            tbs = cfg.student.teacher_batch_size  # chunks of whole teacher batches
            ask = partial(bridged_teacher_outputs, model, device=dev, query=proxy.plan,
                          teacher=plan, batch_size=tbs, at_form=cfg.kd.at_form, p=cfg.kd.at_p,
                          taps=taps, whole_field=whole)
            cache.build_answers(site.name, key, proxy.images, proxy.masks, ask,
                                chunk=build_chunk(proxy.images.shape[-1], tbs))
            log.info("[distill] %s: teacher outputs for %d proxy slices cached", site.name,
                     len(proxy))
            t = cache.open(site.name, key)  # fp16-rounded, as a rerun and the wire see
        assert t is not None
        parts.append(t)
    return CachedTargets.stack(parts)


class LocalSites:
    """Every site of the config, read in-process (:class:`~coordinator.distill.sites.Sites`)."""

    transport: Literal["local", "federated"] = "local"
    guard_query = (0, 0)

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.status = RunStatus(transport="local", sites=expected_roster(cfg),
                                required=required_sites(cfg))
        self.teacher_ids: list[str] | None = None
        self.site_tests: dict[str, list] = {}
        self.expected = len(cfg.sites)

    def connect(self, cfg: ExperimentConfig) -> dict[str, float | None]:
        """Each site's teacher validation Dice from its ``teacher.json``."""
        val = {}
        for s in cfg.sites:
            card = _card(s)
            val[s.name] = card.val_dice if card is not None else None
            self.status.sites[s.name] = SiteReport(state="ready")
        self.teacher_ids = [teacher_digest(s.teacher_dir) for s in cfg.sites]
        return val

    def teacher_outputs(self, cfg: ExperimentConfig, proxy: ProxySet
                        ) -> tuple[list[str], CachedTargets]:
        """Every site's teacher outputs (in-process, cached), in the config's order."""
        targets = local_targets(cfg, proxy, TeacherCache(cfg.out / "teacher_cache"))
        for s in cfg.sites:
            self.status.sites[s.name].state = "answered"
        return [s.name for s in cfg.sites], targets

    def scorer(self, cfg: ExperimentConfig, proxy: ProxySet) -> Scorer:
        """Scores on every site's held-out test volumes, prepared in the student's plan."""
        self.site_tests = {s.name: load_site_test(s, cfg.student.size, proxy.plan)
                           for s in cfg.sites}
        dev = select_device(cfg.student.device)
        holder = DistillData(proxy, None, [s.name for s in cfg.sites], self.site_tests)

        def score(name: str, model: object, out: object) -> tuple[dict, dict]:
            res = _site_scores(model, holder, dev, out)  # type: ignore[arg-type]
            for site in res[0]:
                self.status.sites[site].state = "scored"
            return res

        return score

    def teacher_rows(self, cfg: ExperimentConfig) -> list[ResultRow]:
        """Every teacher on every site's test set (:mod:`coordinator.teacher_rows`)."""
        from coordinator.teacher_rows import teacher_rows

        return teacher_rows(cfg)

    def peer_rows(self, cfg: ExperimentConfig, data: object, rows: list[ResultRow]
                  ) -> list[ResultRow]:
        """Costs, then ``local_only``, ``pooled`` and FedAvg when configured."""
        from coordinator.baselines.rows import baseline_rows

        assert isinstance(data, DistillData)
        return baseline_rows(cfg, data, rows)

    def not_run(self, cfg: ExperimentConfig) -> list[str]:
        """Nothing: every row can run in-process."""
        return []
