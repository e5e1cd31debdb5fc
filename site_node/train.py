"""``site-node train``: train the site's private teacher on its own data.

Adam + CyclicLR (paper 4.3), Dice + Lovasz loss, early stopping on validation 3D Dice, atomic
checkpoints with ``--resume``, CSV metrics, PNG curves and overlays, and a ``teacher.json``
model card that describes the data by counts and intensity statistics only (never pixels).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.data.augment import build_augment, reseed_worker
from common.data.layout import DatasetInfo, discover_dataset
from common.data.nifti import load_nifti
from common.data.slices import SliceDataset, Volume, load_volumes
from common.data.split import Split, load_split, save_split, split_cases
from common.evaluate import evaluate_volumes, mean_dice, save_case_overlays
from common.io import atomic_write_json
from common.kd.losses import SegLoss
from common.metrics import summarise
from common.models import build_model, count_params
from common.models.base import SegModel
from common.models.checkpoint import model_state
from common.training import (
    Checkpointer,
    CsvLog,
    EarlyStopping,
    autocast,
    iterate_progress,
    plot_curves,
    seed_everything,
    select_device,
)
from site_node.train_config import TeacherTrainConfig

LOG_FIELDS = ["epoch", "train_loss", "val_dice", "lr", "seconds"]


@dataclass
class SiteData:
    """The site's dataset split into case-level train/val/test volumes."""

    info: DatasetInfo
    split: Split
    train: list[Volume]
    val: list[Volume]
    test: list[Volume]


def prepare_data(data_dir: Path, cfg: TeacherTrainConfig, out: Path) -> SiteData:
    """Discover, split (reusing ``out/split.json`` if present) and load the site's volumes."""
    info = discover_dataset(data_dir)
    split_path = out / "split.json"
    if split_path.exists():
        split = load_split(split_path)
    else:
        ids = [c.case_id for c in info.cases]
        split = split_cases(ids, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        save_split(split_path, split)
    vols = {s: load_volumes(info, getattr(split, s), cfg.size) for s in ("train", "val", "test")}
    return SiteData(info, split, vols["train"], vols["val"], vols["test"])


def data_fingerprint(info: DatasetInfo, split: Split) -> dict[str, Any]:
    """Counts and raw intensity statistics of the training cases: no pixels, no case ids."""
    train = [c for c in info.cases if c.case_id in set(split.train)]
    means, stds, p99, slices = [], [], [], 0
    for ref in train:
        arr, _ = load_nifti(ref.image, first_channel=True)
        means.append(float(arr.mean()))
        stds.append(float(arr.std()))
        p99.append(float(np.percentile(arr, 99.5)))
        slices += int(arr.shape[0])
    return {
        "modality": info.modality,
        "cases": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
        "train_slices": slices,
        "intensity_mean": float(np.mean(means)),
        "intensity_std_mean": float(np.mean(stds)),
        "intensity_p99_5_mean": float(np.mean(p99)),
    }


def make_optim(
    model: SegModel, cfg: TeacherTrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.CyclicLR]:
    """Adam (default betas) with a CyclicLR between ``base_lr`` and ``max_lr``."""
    o = cfg.optim
    opt = torch.optim.Adam(model.parameters(), lr=o.max_lr, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=o.base_lr, max_lr=o.max_lr, step_size_up=o.step_size_up,
        mode=o.cyclic_mode, cycle_momentum=False,
    )
    return opt, sched


def train_epoch(
    model: SegModel, loader: DataLoader, parts: tuple[Any, Any, Any], device: torch.device,
    cfg: TeacherTrainConfig, desc: str,
) -> float:
    """One pass over ``loader``; returns the mean training loss."""
    loss_fn, opt, sched = parts
    model.train()
    total, n = 0.0, 0
    for step, batch in enumerate(iterate_progress(loader, desc)):
        if cfg.max_steps_per_epoch is not None and step >= cfg.max_steps_per_epoch:
            break
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        with autocast(device, cfg.amp):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total, n = total + float(loss.detach()), n + 1
    return total / max(n, 1)


def _loader(vols: list[Volume], cfg: TeacherTrainConfig, gen: torch.Generator) -> DataLoader:
    aug = build_augment(cfg.augment, seed=cfg.seed)
    ds = SliceDataset(vols, augment=aug, skip_empty_fraction=cfg.skip_empty_fraction)
    return DataLoader(
        ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(ds) > cfg.batch_size,
        num_workers=cfg.num_workers, generator=gen, worker_init_fn=reseed_worker,
    )


def _restore(ckpt: Checkpointer, model: SegModel, parts: tuple, early: EarlyStopping) -> int:
    """Load ``last.pt`` into model/optimizer/scheduler/early-stopping; return the next epoch."""
    state = ckpt.load("last.pt")
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    parts[1].load_state_dict(state["optimizer"])
    parts[2].load_state_dict(state["scheduler"])
    early.best, early.best_epoch, early.bad_epochs = state["early"]
    torch.set_rng_state(state["rng"])
    return int(state["epoch"]) + 1


def fit(
    data: SiteData, cfg: TeacherTrainConfig, out: Path, resume: bool = False
) -> tuple[SegModel, EarlyStopping]:
    """Train with early stopping; returns the best model (loaded from ``best.pt``)."""
    device = select_device(cfg.device)
    gen = seed_everything(cfg.seed)
    kwargs = {"in_channels": 1, "num_classes": 2}
    model = build_model(cfg.model, **kwargs).to(device)
    opt, sched = make_optim(model, cfg)
    parts = (SegLoss(cfg.dice_weight, cfg.lovasz_weight), opt, sched)
    ckpt, early = Checkpointer(out), EarlyStopping(cfg.patience)
    log = CsvLog(out / "metrics.csv", LOG_FIELDS)
    start = _restore(ckpt, model, parts, early) if resume else 0
    log.truncate_after(start - 1) if log.path.exists() else None
    loader = _loader(data.train, cfg, gen)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        loss = train_epoch(model, loader, parts, device, cfg, f"epoch {epoch}")
        dice = mean_dice(evaluate_volumes(model, data.val, device)[0])
        if early.step(dice, epoch):
            ckpt.save("best.pt", {**model_state(model, cfg.model, kwargs), "epoch": epoch})
        ckpt.save("last.pt", {
            **model_state(model, cfg.model, kwargs), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "epoch": epoch, "rng": torch.get_rng_state(),
            "early": (early.best, early.best_epoch, early.bad_epochs),
        })
        row = {"epoch": epoch, "train_loss": f"{loss:.5f}", "val_dice": f"{dice:.5f}",
               "lr": f"{sched.get_last_lr()[0]:.3g}", "seconds": f"{time.perf_counter() - t0:.1f}"}
        log.append(row)
        print(f"[train] epoch {epoch}: loss {loss:.4f}  val 3D Dice {dice:.4f}", flush=True)
        if early.should_stop:
            print(f"[train] early stop: no val improvement for {cfg.patience} epochs")
            break
    plot_curves(log.read(), ["train_loss", "val_dice"], out / "curves.png", f"teacher {cfg.model}")
    best = ckpt.load("best.pt", device)
    if best is not None:
        model.load_state_dict(best["model"])
    return model.eval(), early


def run_training(data_dir: Path, cfg: TeacherTrainConfig, out: Path, resume: bool = False) -> dict:
    """Full ``site-node train``: fit, test on held-out volumes, write overlays and teacher.json."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "train_config.json", cfg.model_dump())
    data = prepare_data(data_dir, cfg, out)
    model, early = fit(data, cfg, out, resume)
    scores, preds = evaluate_volumes(model, data.test, next(model.parameters()).device)
    save_case_overlays(data.test, preds, out / "overlays")
    test = summarise(scores)
    card: dict[str, Any] = {
        "architecture": cfg.model,
        "params": count_params(model),
        "input": {"in_channels": 1, "num_classes": 2, "size": cfg.size},
        "checkpoint": "best.pt",
        "best_epoch": early.best_epoch,
        "val_dice": early.best,
        "test": test,
        "data_fingerprint": data_fingerprint(data.info, data.split),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(out / "teacher.json", card)
    atomic_write_json(out / "test_scores.json", {k: vars(v) for k, v in scores.items()})
    print(f"[train] test 3D Dice {test['dice_mean']:.4f} on {len(scores)} held-out cases")
    return card
