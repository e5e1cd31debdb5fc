"""One FedAvg client update (baseline): the same code at a site and in ``--local``.

A site node (``site_node.fedavg``, message ``query.fedavg_train``) and the coordinator's
in-process FedAvg loop (``coordinator.baselines.fedavg``) both call :func:`local_update`, so the
FedAvg row is trained identically in both. The update: the student's segmentation loss
(``dice_weight * Dice + lovasz_weight * Lovasz``, the no-KD student rows' loss, with the same
padding rule: ``padding = "exclude"`` leaves the plan's canvas padding and augmentation padding
out of it), its joint augmentation, and the trainers' one optimiser
(:class:`~common.training.OptimSpec`): Adam (fresh state each round) whose learning rate follows
torch's triangular ``CyclicLR`` continued over the site's local steps (``step0`` = steps of
earlier rounds). FedProx adds the proximal term ``mu/2 * ||w - w_global||^2`` over the trainable
parameters (:func:`proximal_term`; ``proximal_mu = 0`` skips it: the FedAvg update, bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence
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
from common.data.slices import SliceDataset, Volume
from common.kd.losses import SegLoss
from common.models import build_model
from common.training import OptimSpec, adam

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
    proximal_mu: float = 0.0  # FedProx's mu (Flower's "proximal-mu"); 0: FedAvg

    @property
    def optim(self) -> OptimSpec:
        """The optimiser of the student rows (:class:`common.training.OptimSpec`)."""
        return OptimSpec(max_lr=self.max_lr, base_lr=self.base_lr,
                         step_size_up=self.step_size_up, weight_decay=self.weight_decay)


class _Slices(Dataset):
    """``images (N,1,S,S)`` float32 + ``masks (N,S,S)`` uint8, jointly augmented with the
    validity of each pixel: item ``(image (1,S,S), mask (S,S) long, valid (S,S) float)``, valid
    = 1 inside the slice's ``extents`` row ``(y0, y1, x0, x1)`` (whole canvas without extents)
    and not brought in by the augmentation (as :class:`coordinator.distill.dataset
    .DistillDataset`). ``crops``: the volumes' :class:`~common.data.slices.SliceDataset` whose
    item ``i`` is slice ``i``: then the image, mask and extent of item ``i`` come from its
    :meth:`~common.data.slices.SliceDataset.window` (a whole-field crop when the field is wider
    than the canvas; exactly ``images[i]``, ``masks[i]``, ``extents[i]`` when it fits)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, aug: JointAugment,
                 extents: np.ndarray | None = None, crops: SliceDataset | None = None) -> None:
        self.images, self.masks, self.aug, self.extents = images, masks, aug, extents
        self.crops = crops

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hw = (int(self.masks.shape[-2]), int(self.masks.shape[-1]))
        if self.crops is not None:
            image, label, box = self.crops.window(i)
            real = extent_mask(box, hw)
        else:
            image, label = self.images[i, 0], self.masks[i]
            real = extent_mask(None if self.extents is None else self.extents[i], hw)
        img, mask, maps = self.aug(image, label, {"valid": real})
        valid = (maps or {"valid": real})["valid"] >= VALID_THRESHOLD
        return (torch.from_numpy(np.ascontiguousarray(img, np.float32))[None],
                torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)),
                torch.from_numpy(valid.astype(np.float32)))


def proximal_term(params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor], mu: float
                  ) -> torch.Tensor:
    """FedProx's ``mu/2 * sum_i ||w_i - w0_i||^2`` (a scalar) of the trainable ``params``
    against the round's global weights ``anchor`` (same shapes, no gradient); its gradient
    with respect to ``w_i`` is ``mu * (w_i - w0_i)``."""
    total = torch.zeros((), device=params[0].device if params else None)
    for w, w0 in zip(params, anchor, strict=True):
        total = total + ((w - w0) ** 2).sum()
    return (mu / 2) * total


def whole_field_crops(volumes: list[Volume] | None, n: int, seed: int) -> SliceDataset | None:
    """The site's training ``volumes`` (``n`` slices, volume then z order) as the same
    whole-field crop sampler as site teacher training (:class:`~common.data.slices
    .SliceDataset`, every slice kept, ``crop_seed = seed``); None when no field is wider than
    the canvas (the flat slices are then the training slices, unchanged)."""
    if not volumes or not any(v.wide for v in volumes):
        return None
    crops = SliceDataset(volumes, crop_seed=seed)
    if len(crops) != n:
        raise ValueError(f"{n} training slices but the volumes hold {len(crops)}")
    return crops


def _loader(images: np.ndarray, masks: np.ndarray, spec: LocalSpec,
            augment: AugmentConfig, extents: np.ndarray | None,
            crops: SliceDataset | None = None) -> DataLoader:
    seed = spec.seed * 100_003 + spec.server_round
    ds = _Slices(images, masks, build_augment(augment, seed=seed), extents, crops)
    return DataLoader(ds, batch_size=spec.batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed),
                      drop_last=len(ds) > spec.batch_size, worker_init_fn=reseed_worker)


def local_update(state: dict[str, torch.Tensor], images: np.ndarray, masks: np.ndarray,
                 spec: LocalSpec, augment: AugmentConfig, device: torch.device,
                 extents: np.ndarray | None = None, volumes: list[Volume] | None = None
                 ) -> tuple[dict[str, torch.Tensor], float]:
    """Train ``state`` for ``spec.local_epochs`` on ``images (N,1,S,S)`` / ``masks (N,S,S)``
    (``extents (N, 4)``: where each slice's real pixels lie); ``(new state_dict on CPU, mean
    loss)``. ``volumes``: the volumes those slices were flattened from (volume then z order):
    a slice of a field wider than the canvas is then a whole-field crop
    (:func:`whole_field_crops`, as site teacher training draws them), drawn afresh for local
    epoch ``e`` of round ``r`` as epoch ``(r - 1) * local_epochs + e`` with ``crop_seed =
    spec.seed``: the same crops at a site and in ``--local``. Slices that fit are unchanged.
    The learning-rate schedule position is ``(server_round - 1) * local_epochs *
    batches per epoch``. ``spec.proximal_mu > 0`` adds FedProx's :func:`proximal_term` against
    ``state`` to every step's loss (the returned mean loss is the segmentation loss only).
    Dropout and every other draw from torch's global generator are seeded from ``(seed,
    server_round)`` too, so the update is the same in any process: a site's
    (fresh or forked) ClientApp or the coordinator's ``--local`` stand-in."""
    torch.manual_seed(spec.seed * 100_003 + spec.server_round)
    model = build_model(spec.model, **_KW).to(device)
    model.load_state_dict(state)
    optim = spec.optim
    opt = adam(list(model.parameters()), optim)
    crops = whole_field_crops(volumes, len(images), spec.seed)
    loss_fn, loader = SegLoss(spec.dice_weight, spec.lovasz_weight), _loader(
        images, masks, spec, augment, extents, crops)
    masked = spec.padding == "exclude"
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if spec.proximal_mu > 0 else []
    step = (spec.server_round - 1) * spec.local_epochs * len(loader)
    total, n = 0.0, 0
    model.train()
    for epoch in range(spec.local_epochs):
        if crops is not None:
            crops.set_epoch((spec.server_round - 1) * spec.local_epochs + epoch)
        for x, y, valid in loader:
            for g in opt.param_groups:
                g["lr"] = optim.lr_at(step)
            loss = loss_fn(model(x.to(device)).float(), y.to(device),
                           valid.to(device) if masked else None)
            opt.zero_grad(set_to_none=True)
            if anchor:
                (loss + proximal_term(params, anchor, spec.proximal_mu).to(loss)).backward()
            else:
                loss.backward()
            opt.step()
            step, total, n = step + 1, total + float(loss.detach()), n + 1
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, total / max(n, 1)
