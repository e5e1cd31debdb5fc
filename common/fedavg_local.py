"""One FedAvg client update (baseline): the same code at a site and in ``--local``.

A site node (``site_node.fedavg``, message ``query.fedavg_train``) and the coordinator's
in-process FedAvg loop (``coordinator.baselines.fedavg``) both call :func:`local_update`, so the
FedAvg row is trained identically in both. The update: the student's segmentation loss
(``dice_weight * Dice + lovasz_weight * Lovasz``, the no-KD student rows' loss, with the same
padding rule: ``padding = "exclude"`` leaves the plan's canvas padding and augmentation padding
out of it), its joint augmentation, Adam (fresh state each round) whose learning rate follows
torch's triangular ``CyclicLR`` continued over the site's local steps (``step0`` = steps of
earlier rounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.data.augment import (
    VALID_THRESHOLD,
    AugmentConfig,
    JointAugment,
    build_augment,
    reseed_worker,
)
from common.data.native import extent_mask
from common.kd.losses import SegLoss
from common.models import build_model

_KW = {"in_channels": 1, "num_classes": 2}


@dataclass(frozen=True)
class LocalSpec:
    """How one client trains in one round (carried in the FedAvg request's config)."""

    model: str
    local_epochs: int
    batch_size: int
    max_lr: float
    base_lr: float
    step_size_up: int
    weight_decay: float
    dice_weight: float
    lovasz_weight: float
    seed: int
    server_round: int
    padding: str = "exclude"  # [kd] padding: "exclude" masks padding out of the loss


def cyclic_lr(step: int, base: float, top: float, half: int) -> float:
    """torch's triangular CyclicLR at ``step``: ``base`` -> ``top`` over ``half`` steps, back."""
    cycle = math.floor(1 + step / (2 * half))
    x = abs(step / half - 2 * cycle + 1)
    return base + (top - base) * max(0.0, 1.0 - x)


class _Slices(Dataset):
    """``images (N,1,S,S)`` float32 + ``masks (N,S,S)`` uint8, jointly augmented with the
    validity of each pixel: item ``(image (1,S,S), mask (S,S) long, valid (S,S) float)``, valid
    = 1 inside the slice's ``extents`` row ``(y0, y1, x0, x1)`` (whole canvas without extents)
    and not brought in by the augmentation (as :class:`coordinator.distill.dataset
    .DistillDataset`)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, aug: JointAugment,
                 extents: np.ndarray | None = None) -> None:
        self.images, self.masks, self.aug, self.extents = images, masks, aug, extents

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hw = (int(self.masks.shape[-2]), int(self.masks.shape[-1]))
        real = extent_mask(None if self.extents is None else self.extents[i], hw)
        img, mask, maps = self.aug(self.images[i, 0], self.masks[i], {"valid": real})
        valid = (maps or {"valid": real})["valid"] >= VALID_THRESHOLD
        return (torch.from_numpy(np.ascontiguousarray(img, np.float32))[None],
                torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)),
                torch.from_numpy(valid.astype(np.float32)))


def _loader(images: np.ndarray, masks: np.ndarray, spec: LocalSpec,
            augment: AugmentConfig, extents: np.ndarray | None) -> DataLoader:
    seed = spec.seed * 100_003 + spec.server_round
    ds = _Slices(images, masks, build_augment(augment, seed=seed), extents)
    return DataLoader(ds, batch_size=spec.batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed),
                      drop_last=len(ds) > spec.batch_size, worker_init_fn=reseed_worker)


def local_update(state: dict[str, torch.Tensor], images: np.ndarray, masks: np.ndarray,
                 spec: LocalSpec, augment: AugmentConfig, device: torch.device,
                 extents: np.ndarray | None = None) -> tuple[dict[str, torch.Tensor], float]:
    """Train ``state`` for ``spec.local_epochs`` on ``images (N,1,S,S)`` / ``masks (N,S,S)``
    (``extents (N, 4)``: where each slice's real pixels lie); ``(new state_dict on CPU, mean
    loss)``. The learning-rate schedule position is ``(server_round - 1) * local_epochs *
    batches per epoch``. Dropout and every other draw from torch's global generator are seeded
    from ``(seed, server_round)`` too, so the update is the same in any process: a site's
    (fresh or forked) ClientApp or the coordinator's ``--local`` stand-in."""
    torch.manual_seed(spec.seed * 100_003 + spec.server_round)
    model = build_model(spec.model, **_KW).to(device)
    model.load_state_dict(state)
    opt = torch.optim.Adam(model.parameters(), lr=spec.max_lr, weight_decay=spec.weight_decay)
    loss_fn, loader = SegLoss(spec.dice_weight, spec.lovasz_weight), _loader(
        images, masks, spec, augment, extents)
    masked = spec.padding == "exclude"
    step = (spec.server_round - 1) * spec.local_epochs * len(loader)
    total, n = 0.0, 0
    model.train()
    for _ in range(spec.local_epochs):
        for x, y, valid in loader:
            for g in opt.param_groups:
                g["lr"] = cyclic_lr(step, spec.base_lr, spec.max_lr, spec.step_size_up)
            loss = loss_fn(model(x.to(device)).float(), y.to(device),
                           valid.to(device) if masked else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step, total, n = step + 1, total + float(loss.detach()), n + 1
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, total / max(n, 1)
