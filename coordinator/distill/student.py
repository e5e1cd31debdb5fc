"""Train one student (no KD, single teacher or fused multi-teacher) and score it per site."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.data.augment import build_augment, reseed_worker
from common.data.slices import Volume
from common.inference.evaluate import evaluate_volumes, save_case_overlays
from common.io import atomic_write_json
from common.kd.fusion import build_weighting
from common.kd.learned import LearnedWeighting, describe, is_trainable
from common.kd.losses import KDLoss
from common.metrics import summarise
from common.models import build_model
from common.models.base import SegModel, SegOutput
from common.training import (
    CsvLog,
    OptimSpec,
    Trainer,
    fit_epochs,
    iterate_progress,
    plot_curves,
    seed_everything,
    select_device,
)
from coordinator.distill.cache import CachedTargets, Targets, iter_chunks, read_rows, stored_weights
from coordinator.distill.config import ExperimentConfig, KDConfig, WeightingSpec
from coordinator.distill.dataset import DistillDataset, batch_targets
from coordinator.distill.identity import claim_run_folder, run_fingerprint
from coordinator.distill.proxy import ProxySet
from coordinator.distill.results_file import ResultRow

if TYPE_CHECKING:
    from coordinator.distill.sites import Scorer

log = logging.getLogger(__name__)


@dataclass
class StudentRun:
    """One row of the results table: which teachers teach, fused how."""

    name: str
    teachers: list[int] = field(default_factory=list)  # indices into the site list; [] = no KD
    weighting: WeightingSpec | None = None


@dataclass
class DistillData:
    """Everything a student run needs: proxy slices, all teachers' outputs, site test sets."""

    proxy: ProxySet
    targets: Targets | None  # (J, N, ...) for all sites (in memory or cached on disk), or None
    site_names: list[str]
    site_tests: dict[str, list[Volume]]
    teacher_ids: list[str] | None = None  # per site: teacher digest (None: digest of logits)
    #: how a trained student is scored at the sites (None: on ``site_tests`` in-process)
    scorer: Scorer | None = None


def run_targets(run: StudentRun, data: DistillData) -> Targets | None:
    """The teachers of ``run`` (``(J_run, N, ...)``), or ``None`` for the no-KD run."""
    if not run.teachers or data.targets is None:
        return None
    return data.targets.select(run.teachers)


def slice_weights(spec: WeightingSpec, t: Targets, masks: np.ndarray,
                  chunk: int = 64) -> torch.Tensor:
    """Per-slice teacher weights ``(N, J)`` on the cached, *un-augmented* outputs.

    The weight of a teacher is a property of the input slice (paper: "per input"); computing it
    on augmented maps would let border padding (logit 0 = p 0.5 for every teacher) make a bad
    teacher look as good as the others on empty slices. Streams ``chunk`` slices at a time
    (only one chunk of every teacher's logits is in memory).
    """
    weighting = build_weighting(spec.name, **spec.kwargs)
    out = []
    for a, part in iter_chunks(t, chunk):
        probs = torch.softmax(part.logits.float(), dim=2)  # (J,b,K,H,W), T=1
        out.append(weighting(probs, torch.from_numpy(read_rows(masks, a, a + chunk)).long()))
    return torch.cat(out)


def run_weights(spec: WeightingSpec, t: Targets, masks: np.ndarray) -> torch.Tensor:
    """:func:`slice_weights`, computed once per teacher set, rule and masks and stored beside
    the on-disk cache (reruns, repeats and resumes read them back); in-memory targets: computed."""
    if not isinstance(t, CachedTargets):
        return slice_weights(spec, t, masks)
    label = spec.model_dump_json(include={"name", "kwargs"})  # only the rule decides weights
    return stored_weights(t, label, masks, lambda: slice_weights(spec, t, masks))


def slice_descriptors(t: Targets, chunk: int = 64) -> torch.Tensor:
    """Per-slice teacher descriptors ``(N, J, 3)`` of a learned weighting
    (:func:`common.kd.learned.describe`) on the cached, un-augmented outputs (as
    :func:`slice_weights`), streamed ``chunk`` slices at a time."""
    return torch.cat([describe(torch.softmax(part.logits.float(), dim=2))
                      for _, part in iter_chunks(t, chunk)])


@dataclass
class Fusion:
    """How a run weights its teachers: fixed per-slice ``weights (N, J)``, or a learned
    weighting (``learned``) applied per batch to per-slice ``descriptors (N, J, 3)``."""

    weights: torch.Tensor | None = None
    learned: LearnedWeighting | None = None
    descriptors: torch.Tensor | None = None

    def batch(self, index: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        """Weights ``(B, J)`` of the batch's slices ``index`` (None: no teachers)."""
        if self.learned is not None and self.descriptors is not None:
            return self.learned.from_descriptors(self.descriptors[index].to(device))
        return None if self.weights is None else self.weights[index].to(device)


def run_fusion(run: StudentRun, t: Targets | None, masks: np.ndarray,
               device: torch.device) -> Fusion:
    """The run's :class:`Fusion` (empty without teachers); a learned weighting is built here,
    bound to the run's teachers and moved to ``device`` (its parameters then go to the
    student's optimiser)."""
    if t is None:
        return Fusion()
    spec = run.weighting or WeightingSpec(name="equal")
    weighting = build_weighting(spec.name, **spec.kwargs)
    if is_trainable(weighting):
        assert isinstance(weighting, LearnedWeighting)
        weighting.bind(len(run.teachers)).to(device)
        return Fusion(learned=weighting, descriptors=slice_descriptors(t))
    return Fusion(weights=run_weights(spec, t, masks))


def kd_loss(k: KDConfig) -> KDLoss:
    """The student's loss for the KD settings ``k`` (a row's, overrides applied)."""
    return KDLoss(alpha=k.alpha, beta=k.beta, temperature=k.temperature,
                  kl_direction=k.kl_direction, at_form=k.at_form, p=k.at_p,
                  dice_weight=k.dice_weight, lovasz_weight=k.lovasz_weight,
                  at_reduce=k.at_reduce, kl_t2=k.kl_t2, feature_taps=k.feature_taps,
                  seg_on_padding=k.padding != "exclude", rc_weight=k.rc_weight)


class _Step:
    """Loss computation for one batch of a run (baseline, mono- or multi-teacher)."""

    def __init__(self, run: StudentRun, cfg: ExperimentConfig, device: torch.device,
                 fusion: Fusion | None = None) -> None:
        k = cfg.kd
        self.run, self.device = run, device
        self.loss = kd_loss(k)
        self.fusion = fusion or Fusion()
        self.padding = k.padding

    def __call__(self, out: SegOutput, batch: dict[str, Any]) -> tuple[dict, torch.Tensor | None]:
        y = batch["mask"].to(self.device)
        valid = batch["valid"].to(self.device) if self.padding != "none" else None
        w = self.fusion.batch(batch["index"], self.device) if self.run.teachers else None
        if w is None:
            return self.loss(out, y, None, None, valid), None
        t = batch_targets(batch, self.device)
        return self.loss(out, y, t, w, valid), w


def _float_out(out: SegOutput) -> SegOutput:
    dec = None if out.decoder is None else out.decoder.float()
    return SegOutput(out.logits.float(), tuple(f.float() for f in out.features), dec)


def _model(cfg: ExperimentConfig, device: torch.device) -> SegModel:
    s = cfg.student
    model = build_model(s.model, **_KW).to(device)
    if s.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _trainer(model: SegModel, loader: DataLoader, cfg: ExperimentConfig, device: torch.device,
             out: Path, fusion: Fusion | None = None) -> Trainer[SegModel]:
    """The shared skeleton (Adam + CyclicLR, AMP, exact resume from ``out/last.pt``); a learned
    weighting's parameters are trained by the same optimiser and saved in ``last.pt``."""
    s = cfg.student
    spec = OptimSpec(max_lr=s.max_lr, base_lr=s.base_lr, step_size_up=s.step_size_up,
                     weight_decay=s.weight_decay)
    learned = None if fusion is None else fusion.learned
    if learned is None:
        return Trainer(model, (s.model, _KW), spec, device, out, amp=s.amp, loaders=[loader])
    return Trainer(model, (s.model, _KW), spec, device, out, amp=s.amp, loaders=[loader],
                   extra={"weighting": learned.module}, params=list(learned.module.parameters()))


def _loader(t: Targets | None, data: DistillData, cfg: ExperimentConfig) -> DataLoader:
    ds = DistillDataset(data.proxy, t, build_augment(cfg.student.augment, seed=cfg.seed),
                        renormalise_at=cfg.kd.at_form == "zagoruyko",
                        canvas_padding=cfg.kd.padding == "exclude", crop_seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(ds, batch_size=cfg.student.batch_size, shuffle=True, generator=gen,
                      drop_last=len(ds) > cfg.student.batch_size, worker_init_fn=reseed_worker)


def _epoch(tr: Trainer[SegModel], loader: DataLoader, step: _Step, cfg: ExperimentConfig,
           desc: str) -> dict[str, float]:
    """One epoch; returns mean loss terms and mean teacher weights (``w0``, ``w1``...)."""
    model, dev, s = tr.model, tr.device, cfg.student
    fwd = torch.compile(model.seg_forward) if s.compile else model.seg_forward
    sums: dict[str, float] = {}
    n = 0
    model.train()
    for batch in iterate_progress(loader, desc):
        x = batch["image"].to(dev, non_blocking=True)
        if s.channels_last and dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with tr.autocast():
            out = fwd(x)
        terms, w = step(_float_out(out), batch)
        tr.step(terms["total"])
        n += 1
        vals = {k: float(v.detach()) for k, v in terms.items()}
        if w is not None:
            vals.update({f"w{j}": float(w[:, j].detach().mean()) for j in range(w.shape[1])})
        sums = {k: sums.get(k, 0.0) + v for k, v in vals.items()}
    return {k: v / max(n, 1) for k, v in sums.items()}


def _site_scores(model: SegModel, data: DistillData, dev: torch.device, out: Path
                 ) -> tuple[dict, dict]:
    """Per-site 3D Dice/VOE/HD95 summaries on the sites' held-out volumes, plus overlays;
    and the per-case scores ``{site: {case: {dice, voe, hd95}}}`` (paired comparisons), keyed
    ``case000``, ``case001``... in the test split's order, as a federated site reports them
    (never the file names)."""
    from common.inference.evaluate_folder import case_scores_json

    res, cases = {}, {}
    for site, vols in data.site_tests.items():
        scores, preds = evaluate_volumes(model, vols, dev)
        save_case_overlays(vols, preds, out / "overlays" / site, max_cases=2)
        per_case = case_scores_json(scores).values()
        res[site] = summarise(scores)
        cases[site] = {f"case{i:03d}": v for i, v in enumerate(per_case)}
    return res, cases


def train_student(run: StudentRun, data: DistillData, cfg: ExperimentConfig, out: Path
                  ) -> ResultRow:
    """Train ``run`` for ``cfg.student.epochs`` (resuming from ``out/last.pt``), then score it.

    ``out`` is reused or resumed only for the same teacher set, proxy, config and code
    (:mod:`coordinator.distill.identity`); otherwise it is wiped and the run retrains."""
    identity = claim_run_folder(out, run_fingerprint(run, data, cfg), cfg.student.epochs)
    done = out / "result.json"
    if done.exists():
        return _load_result(done)
    dev = select_device(cfg.student.device)
    names = [data.site_names[j] for j in run.teachers]
    model, t_train = _fit(run, data, cfg, out)
    name = f"{run.name}_seed{cfg.seed}" if cfg.repeats > 1 else run.name
    if data.scorer is not None:
        sites, cases = data.scorer(name, model.eval(), out)
    else:
        sites, cases = _site_scores(model, data, dev, out)
    result = {"run": run.name, "teachers": names, "student": cfg.student.model,
              "weighting": run.weighting.label if run.weighting else None,
              "sites": sites, "train_seconds": t_train, "seed": cfg.seed, "cases": cases,
              "identity": identity,
              "mean_dice": mean_dice(sites)}
    result.update(_proxy_scores(name, model, data, cfg, dev, sites))
    atomic_write_json(done, result)
    return cast(ResultRow, result)


def _proxy_scores(name: str, model: SegModel, data: DistillData, cfg: ExperimentConfig,
                  dev: torch.device, sites: dict[str, dict]) -> dict[str, Any]:
    """``{"proxy": summary, "proxy_cases": per case}`` when no site gave a score and the proxy
    is labelled (:mod:`coordinator.distill.proxy_score`: optimistic); ``{}`` otherwise."""
    from coordinator.distill.proxy_score import no_site_score, score_on_proxy

    if data.proxy.plan is None or not no_site_score(sites):
        return {}
    got = score_on_proxy(model.eval(), cfg.proxy, data.proxy.plan, dev)
    if got is None:
        return {}
    log.warning("[distill] %s: no site holds a test case; scored on the labelled proxy "
                "(optimistic: the student trained on it): Dice %.3f", name, got[0]["dice_mean"])
    return {"proxy": got[0], "proxy_cases": got[1]}


def mean_dice(sites: dict[str, dict]) -> float:
    """Mean of the sites' defined ``dice_mean`` (NaN when none is: e.g. no test case, or a site
    whose evaluate failed)."""
    vals = [float(v["dice_mean"]) for v in sites.values()
            if v.get("dice_mean") is not None and v["dice_mean"] == v["dice_mean"]]
    return sum(vals) / len(vals) if vals else float("nan")


_KW = {"in_channels": 1, "num_classes": 2}


def _fit(run: StudentRun, data: DistillData, cfg: ExperimentConfig, out: Path
         ) -> tuple[SegModel, float]:
    """Train ``run`` to ``cfg.student.epochs`` (exact resume from ``out/last.pt``); the model
    and the training seconds spent in this call. Writes ``metrics.csv`` and ``curves.png``."""
    dev = select_device(cfg.student.device)
    seed_everything(cfg.seed)
    model = _model(cfg, dev)
    t = run_targets(run, data)
    fusion = run_fusion(run, t, data.proxy.masks, dev)
    step, loader = _Step(run, cfg, dev, fusion), _loader(t, data, cfg)
    tr = _trainer(model, loader, cfg, dev, out, fusion)
    fields = ["epoch", "total", "seg", "mid", "kl", "seconds"]
    csv_log = CsvLog(out / "metrics.csv",
                     fields + [f"w{j}" for j in range(len(run.teachers))])
    clock, epochs = [0.0, 0.0], cfg.student.epochs

    def one_epoch(epoch: int) -> tuple[dict[str, Any], bool]:
        t0 = time.perf_counter()
        if isinstance(loader.dataset, DistillDataset):
            loader.dataset.set_epoch(epoch)  # fresh whole-field crops (site training sets)
        row = _epoch(tr, loader, step, cfg, f"{run.name} ep{epoch}")
        clock[0] += time.perf_counter() - t0
        clock[1] += 1
        eta = clock[0] / clock[1] * (epochs - epoch - 1)
        log.info("[distill] %s seed %d: epoch %d/%d, loss %.4f, %.1f s/epoch, ETA %.0f s",
                 run.name, cfg.seed, epoch + 1, epochs, row.get("total", float("nan")),
                 clock[0] / clock[1], eta)
        return {**{k: f"{v:.5f}" for k, v in row.items()},
                "seconds": f"{time.perf_counter() - t0:.2f}"}, False

    fit_epochs(tr, cfg.student.epochs, one_epoch, csv_log)
    plot_curves(csv_log.read(), ["total", "seg"], out / "curves.png", f"student {run.name}")
    return model, clock[0]


def _load_result(path: Path) -> ResultRow:
    """A finished run's ``result.json``; per-site metrics and the mean Dice written as null
    (undefined, e.g. HD95 with an empty prediction) come back as NaN, as before writing."""
    import json

    res = dict(json.loads(path.read_text()))
    res["sites"] = {site: {k: float("nan") if v is None else v for k, v in m.items()}
                    for site, m in res.get("sites", {}).items()}
    if res.get("proxy"):
        res["proxy"] = {k: float("nan") if v is None else v for k, v in res["proxy"].items()}
    if "mean_dice" in res and res["mean_dice"] is None:
        res["mean_dice"] = float("nan")  # no site scored: NaN, as before writing
    return cast(ResultRow, res)
