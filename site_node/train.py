"""``site-node train``: train the site's private teacher on its own data.

Adam + CyclicLR (paper 4.3), Dice + Lovasz loss, early stopping on validation 3D Dice, atomic
checkpoints with ``--resume``, CSV metrics, PNG curves and overlays, and a ``teacher.json``
model card that describes the data by counts and intensity statistics only (never pixels).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from common.data.augment import build_augment, reseed_worker
from common.data.errors import data_error, refuse_inside
from common.data.fingerprint import (
    Fingerprint,
    compute_fingerprint,
    ct_units_note,
    plan_for_dataset,
)
from common.data.layout import DatasetInfo, discover_dataset
from common.data.nifti import NiftiFile, ReadOnce
from common.data.plan import Plan
from common.data.slices import SliceDataset, Volume, load_volumes
from common.data.split import (
    MIN_SPLIT_CASES,
    Split,
    load_split,
    save_split,
    split_cases,
    train_only_split,
)
from common.data.teacher_card import TeacherCard, TeacherInput
from common.inference.evaluate import evaluate_volumes, mean_dice, save_case_overlays
from common.io import atomic_write_json
from common.kd.losses import SegLoss
from common.metrics import summarise
from common.models import build_model, count_params
from common.models.base import SegModel
from common.training import (
    CsvLog,
    EarlyStopping,
    OptimSpec,
    Trainer,
    fit_epochs,
    iterate_progress,
    plot_curves,
    seed_everything,
    select_device,
)
from site_node.train_config import TeacherTrainConfig

LOG_FIELDS = ["epoch", "train_loss", "val_dice", "lr", "seconds"]
_KW: dict[str, Any] = {"in_channels": 1, "num_classes": 2}
log = logging.getLogger(__name__)


@dataclass
class SiteData:
    """The site's dataset split into case-level train/val/test volumes."""

    info: DatasetInfo
    split: Split
    train: list[Volume]
    val: list[Volume]
    test: list[Volume]
    plan: Plan | None = None
    fingerprint: dict[str, Any] | None = None  # :func:`data_fingerprint` (for teacher.json)
    files: ReadOnce | None = None  # keeps the test images the overlays show (and no other)


#: Held-out cases drawn as overlays (``OUT/overlays``); their images stay in memory until then.
OVERLAY_CASES = 3


def prepare_data(data_dir: Path, cfg: TeacherTrainConfig, out: Path) -> SiteData:
    """Discover, split (reusing ``out/split.json`` if present) and load the site's volumes.

    nnU-Net's order, each file read once (:class:`~common.data.nifti.ReadOnce`): fingerprint
    the training cases and plan from it (files kept; the card's :func:`data_fingerprint` is
    made from that fingerprint), then every case prepared from the kept file (train) or its
    only read (val, test); the images of the first :data:`OVERLAY_CASES` test cases stay kept
    for the overlays of :func:`run_training`."""
    info = discover_dataset(data_dir)
    split_path = out / "split.json"
    if split_path.exists():
        split = load_split(split_path)
    else:
        split = site_split([c.case_id for c in info.cases], cfg, data_dir)
        save_split(split_path, split)
    if not (split.val and split.test) and cfg.small_site == "refuse":
        raise data_error(split_path, f"no validation or test case; {_SMALL_HINT}")
    files = ReadOnce()
    fp = compute_fingerprint(info, cfg.label, split.train, read=files.keep)
    if (note := ct_units_note(fp)) is not None:
        log.warning("%s", note)
    plan = plan_for_dataset(info, cfg.size, cfg.label, split.train, cache=out / "plan.json",
                            fingerprint=fp)
    shown = {c.image for c in info.cases if c.case_id in set(split.test[:OVERLAY_CASES])}

    def read(path: Path | str, allow_empty: bool = False, first_channel: bool = False
             ) -> NiftiFile:
        keep = Path(path) in shown and first_channel
        return (files.keep if keep else files.take)(path, allow_empty, first_channel)

    vols = {s: load_volumes(info, getattr(split, s), plan.size, plan=plan, read=read)
            for s in ("train", "val", "test")}
    if not any(v.whole_label.any() for v in vols["train"]):
        raise data_error(data_dir, f"no training label has a voxel of the target "
                                   f"{plan.label_name or 'foreground'}: nothing to learn")
    return SiteData(info, split, vols["train"], vols["val"], vols["test"], plan,
                    data_fingerprint(fp, split, vols["train"]), files)


_SMALL_HINT = (f"a teacher needs at least {MIN_SPLIT_CASES} cases (1 train, 1 validation, "
               "1 test). Add cases, or opt in with small_site = \"train_on_all\" in the train "
               "config (trains on every case; no held-out score)")


def site_split(ids: list[str], cfg: TeacherTrainConfig, data_dir: Path) -> Split:
    """Case-level split; below MIN_SPLIT_CASES refuse, or with ``small_site = "train_on_all"``
    put every case in train (no validation, no test)."""
    if len(ids) >= MIN_SPLIT_CASES:
        return split_cases(ids, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    if cfg.small_site == "train_on_all":
        log.warning("%s: %d case(s) < %d: training on all of them, no held-out score",
                    data_dir, len(ids), MIN_SPLIT_CASES)
        return train_only_split(ids)
    raise data_error(data_dir, f"only {len(ids)} case(s); {_SMALL_HINT}")


def data_fingerprint(fp: Fingerprint, split: Split, train: list[Volume]
                     ) -> dict[str, Any]:
    """The card's description of the training data: counts and the dataset fingerprint's
    intensity statistics of the training cases (percentiles, mean and sd of pooled voxel
    samples: :class:`~common.data.fingerprint.IntensityStats`, the one intensity statistic
    the plan is made from); no pixels, no case ids."""
    return {
        "modality": fp.modality,
        "cases": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
        "train_slices": sum(int(v.image.shape[0]) for v in train),
        "intensity": fp.intensity.model_dump(),
    }


def optim_spec(cfg: TeacherTrainConfig) -> OptimSpec:
    """Adam (default betas) with a CyclicLR between ``base_lr`` and ``max_lr``."""
    o = cfg.optim
    return OptimSpec(max_lr=o.max_lr, base_lr=o.base_lr, step_size_up=o.step_size_up,
                     weight_decay=o.weight_decay, mode=o.cyclic_mode)


def train_epoch(
    tr: Trainer[SegModel], loader: DataLoader, loss_fn: SegLoss, cfg: TeacherTrainConfig, desc: str
) -> float:
    """One pass over ``loader``; returns the mean training loss."""
    tr.model.train()
    total, n = 0.0, 0
    for step, batch in enumerate(iterate_progress(loader, desc)):
        if cfg.max_steps_per_epoch is not None and step >= cfg.max_steps_per_epoch:
            break
        x = batch["image"].to(tr.device, non_blocking=True)
        y = batch["mask"].to(tr.device, non_blocking=True)
        with tr.autocast():
            loss = loss_fn(tr.model(x).float(), y)
        tr.step(loss)
        total, n = total + float(loss.detach()), n + 1
    return total / max(n, 1)


def _loader(vols: list[Volume], cfg: TeacherTrainConfig, gen: torch.Generator) -> DataLoader:
    aug = build_augment(cfg.augment, seed=cfg.seed)
    ds = SliceDataset(vols, augment=aug, skip_empty_fraction=cfg.skip_empty_fraction,
                      crop_seed=cfg.seed)  # crops of fields wider than the canvas
    return DataLoader(
        ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(ds) > cfg.batch_size,
        num_workers=cfg.num_workers, generator=gen, worker_init_fn=reseed_worker,
    )


def _validate(tr: Trainer[SegModel], val: list[Volume], early: EarlyStopping, epoch: int) -> str:
    """Val 3D Dice as a log cell; keeps ``best.pt`` on improvement. ``""`` with no val cases."""
    if not val:
        return ""
    dice = mean_dice(evaluate_volumes(tr.model, val, tr.device)[0])
    if early.step(dice, epoch):
        tr.save_best(epoch)
    return f"{dice:.5f}"


def fit(
    data: SiteData, cfg: TeacherTrainConfig, out: Path, resume: bool = False
) -> tuple[SegModel, EarlyStopping]:
    """Train; return the deployed model and the early-stopping record.

    With validation cases: early stopping on val 3D Dice, the best epoch's weights
    (``best.pt``). Without (``small_site = "train_on_all"``): all ``epochs`` epochs, and
    ``best.pt`` holds the final weights (never chosen on an empty validation set).
    """
    device = select_device(cfg.device)
    gen = seed_everything(cfg.seed)
    model = build_model(cfg.model, **_KW).to(device)
    loader, early = _loader(data.train, cfg, gen), EarlyStopping(cfg.patience)
    tr = Trainer(model, (cfg.model, _KW), optim_spec(cfg), device, out, cfg.amp, [loader],
                 {"early": early})
    loss_fn = SegLoss(cfg.dice_weight, cfg.lovasz_weight)

    def one_epoch(epoch: int) -> tuple[dict[str, Any], bool]:
        t0 = time.perf_counter()
        if isinstance(loader.dataset, SliceDataset):
            loader.dataset.set_epoch(epoch)  # fresh crops of wide fields, seeded
        loss = train_epoch(tr, loader, loss_fn, cfg, f"epoch {epoch}")
        dice = _validate(tr, data.val, early, epoch)
        log.info("epoch %d: loss %.4f  val 3D Dice %s", epoch, loss, dice or "n/a")
        if early.should_stop:
            log.info("early stop: no val improvement for %d epochs", cfg.patience)
        return {"train_loss": f"{loss:.5f}", "val_dice": dice, "lr": f"{tr.lr:.3g}",
                "seconds": f"{time.perf_counter() - t0:.1f}"}, early.should_stop

    csv_log = CsvLog(out / "metrics.csv", LOG_FIELDS)
    fit_epochs(tr, cfg.epochs, one_epoch, csv_log, resume)
    plot_curves(csv_log.read(), ["train_loss", "val_dice"], out / "curves.png",
                f"teacher {cfg.model}")
    if data.val:
        tr.load_best()
    else:
        tr.save_best(cfg.epochs - 1)
    return model.eval(), early


def run_training(data_dir: Path, cfg: TeacherTrainConfig, out: Path, resume: bool = False) -> dict:
    """Full ``site-node train``: fit, test on held-out volumes, write overlays and teacher.json.

    ``teacher.json`` is strict JSON. Without held-out cases (``small_site = "train_on_all"``)
    ``val_dice``, ``best_epoch`` and ``test`` are null and ``held_out_score`` is false.
    """
    refuse_inside(out, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "train_config.json", cfg.model_dump())
    data = prepare_data(data_dir, cfg, out)
    model, early = fit(data, cfg, out, resume)
    scores, preds = evaluate_volumes(model, data.test, next(model.parameters()).device)
    save_case_overlays(data.test, preds, out / "overlays", OVERLAY_CASES, read=data.files.take
                       if data.files is not None else None)
    test = summarise(scores) if scores else None
    card = TeacherCard(
        architecture=cfg.model,
        params=count_params(model),
        input=TeacherInput(in_channels=1, num_classes=2,
                           size=data.plan.size if data.plan else cfg.size),
        plan=data.plan,
        **_selection(data, early, cfg),
        test=test,
        data_fingerprint=data.fingerprint,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    card.write(out)
    atomic_write_json(out / "test_scores.json", {k: vars(v) for k, v in scores.items()})
    if test is None:
        log.warning("no held-out cases: the teacher has no test score (see teacher.json)")
    else:
        log.info("test 3D Dice %.4f on %d held-out cases", test["dice_mean"], len(scores))
    return card.as_json()


def _selection(data: SiteData, early: EarlyStopping, cfg: TeacherTrainConfig) -> dict[str, Any]:
    """How ``best.pt`` was chosen, for ``teacher.json``."""
    if data.val:
        return {"checkpoint": "best.pt", "checkpoint_selection": "best_val_dice",
                "best_epoch": early.best_epoch, "val_dice": early.best,
                "held_out_score": bool(data.test)}
    return {"checkpoint": "best.pt", "checkpoint_selection": "final_epoch",
            "best_epoch": None, "val_dice": None, "held_out_score": False,
            "note": f"small_site={cfg.small_site}: all {len(data.split.train)} case(s) used "
                    "for training; no validation or test score exists"}
