"""Per-sample teacher weighting rules and probability fusion (paper Sec. 3.3).

A weighting is a callable ``(teacher_probs (J,B,K,H,W), mask (B,H,W) long | None) ->
weights (B,J)`` whose rows sum to 1: one weight per teacher *per input*, as the paper intends.
Pass probabilities at temperature 1 (``softmax(logits)``) to judge teacher quality. The fusion
itself is :func:`common.kd.functional.fuse_probs` (``TeacherTargets.fused_probs``).

The paper's rule ``w_j = L_j / sum_k L_k`` (``L`` = Dice loss) gives MORE weight to WORSE
teachers; it is kept as ``"paper"`` for reproduction only. The default,
``"inverse_dice_loss"``, weights teachers by ``softmax(-L_j / tau)`` (or ``1 / (L_j + eps)``).
Rules that need labels raise ``ValueError`` when ``mask`` is None; ``"entropy"`` is label-free.

Slices whose label has no foreground (``empty=...``, default ``"hard_dice"`` for the adaptive
rules): there the soft Dice loss measures only how much foreground probability leaks (two
teachers with the same perfect prediction but leaks 1e-5 vs 1e-4 got weights 0.85 / 0.15), so
confidence, not correctness, was rewarded. ``"hard_dice"`` ranks teachers by the Dice of their
argmax prediction instead (:func:`~common.kd.functional.hard_dice_loss_per_sample`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from common.kd.functional import one_hot_labels, soft_dice_loss_per_sample
from common.registry import Registry

Weighting = Callable[[Tensor, Tensor | None], Tensor]
Mode = Literal["inverse", "softmax"]

WEIGHTINGS: Registry[Weighting] = Registry("teacher weighting")
register_weighting = WEIGHTINGS.register

DEFAULT_WEIGHTING = "inverse_dice_loss"


def build_weighting(name: str = DEFAULT_WEIGHTING, **kw: object) -> Weighting:
    """Instantiate the registered weighting ``name``; unknown names list the valid ones."""
    return WEIGHTINGS.build(name, **kw)


def renormalise(weights: Tensor, available: Tensor) -> Tensor:
    """Zero the weights of unavailable teachers and renormalise each row to sum 1.

    ``weights (B,J)``; ``available`` bool ``(B,J)`` or ``(J,)``. A row whose remaining mass is
    zero falls back to equal weights over its available teachers; a row with no available
    teacher raises ``ValueError``.
    """
    avail = available.to(torch.bool).expand_as(weights).to(weights.dtype)
    if (avail.sum(dim=1) == 0).any():
        raise ValueError("a sample has no available teacher; cannot renormalise")
    w = weights * avail
    mass = w.sum(dim=1, keepdim=True)
    w = torch.where(mass > 0, w, avail)
    return w / w.sum(dim=1, keepdim=True)


DiceClasses = Literal["all", "foreground"]
EmptyRule = Literal["hard_dice", "soft", "equal"]
EMPTY_RULES = ("hard_dice", "soft", "equal")


def dice_losses(teacher_probs: Tensor, mask: Tensor | None,
                classes: DiceClasses = "all", empty: EmptyRule = "soft") -> Tensor:
    """Per-sample Dice loss of each teacher: ``(J,B,K,H,W)``, ``(B,H,W)`` -> ``(B,J)``.

    ``classes="all"`` (default) averages the loss over every class, background included, so a
    slice without foreground still ranks teachers (one that predicts foreground everywhere loses
    its background Dice). ``"foreground"`` uses class 1 only.

    ``empty`` chooses the loss on slices whose mask has no foreground (others: soft Dice).
    ``"soft"``: soft Dice as everywhere (rewards low leaked probability, i.e. confidence).
    ``"hard_dice"``: Dice of the argmax prediction with the same smoothing 1, so an empty
    prediction scores 0 (empty-empty = 1) and ``k`` false-positive pixels ``1 - 1/(k+1)`` on
    the foreground class. Chosen over a false-positive *area* because it is the Dice used
    everywhere else (same scale as the soft loss under the same tau) and one stray pixel
    already costs a clear margin, while over an equal-weight fallback because a teacher that
    paints foreground on an empty slice should lose weight there. ``"equal"``: 0 for every
    teacher (equal weights; ``select_best`` then picks the first teacher).
    """
    if mask is None:
        raise ValueError("this teacher weighting needs ground-truth masks (mask is None); "
                         "use 'entropy' or 'equal' for unlabeled proxy data")
    if empty not in EMPTY_RULES:
        raise ValueError(f"empty must be one of {EMPTY_RULES}, got {empty!r}")
    losses = torch.stack([_dice(p, mask, classes, soft_dice_loss_per_sample)
                          for p in teacher_probs], dim=1)
    if empty == "soft":
        return losses
    is_empty = (mask == 1).flatten(1).sum(dim=1) == 0  # (B,)
    if empty == "equal":
        return torch.where(is_empty[:, None], torch.zeros_like(losses), losses)
    rows = is_empty.nonzero().flatten()  # hard Dice only where a slice needs it
    if rows.numel() == 0:
        return losses
    alt = torch.stack([_dice(one_hot_labels(p), mask[rows], classes, soft_dice_loss_per_sample)
                       for p in teacher_probs[:, rows]], dim=1)
    return losses.index_put((rows,), alt.to(losses.dtype))


def _dice(probs: Tensor, mask: Tensor, classes: DiceClasses,
          fn: Callable[..., Tensor]) -> Tensor:
    """Per-sample Dice loss ``fn`` averaged over the chosen classes: ``(B,K,H,W)`` -> ``(B,)``."""
    ks = [1] if classes == "foreground" else range(probs.shape[1])
    return torch.stack([fn(probs, mask, cls=k) for k in ks]).mean(dim=0)


def mean_entropy(teacher_probs: Tensor) -> Tensor:
    """Mean pixel entropy of each teacher (nats): ``(J,B,K,H,W)`` -> ``(B,J)``."""
    ent = -torch.xlogy(teacher_probs, teacher_probs).sum(dim=2)  # (J,B,H,W)
    return ent.flatten(2).mean(dim=2).transpose(0, 1)


def _lower_is_better(scores: Tensor, mode: Mode, tau: float, eps: float) -> Tensor:
    """Costs ``(B,J)`` -> weights ``(B,J)``: ``1/(s+eps)`` normalised, or ``softmax(-s/tau)``."""
    if mode == "inverse":
        inv = 1.0 / (scores + eps)
        return inv / inv.sum(dim=1, keepdim=True)
    if mode == "softmax":
        return torch.softmax(-scores / tau, dim=1)
    raise ValueError(f"mode must be 'inverse' or 'softmax', got {mode!r}")


@register_weighting("equal")
class EqualWeighting:
    """FedDF/FedMD-style averaging: ``1/J`` for every teacher and sample."""

    def __call__(self, teacher_probs: Tensor, mask: Tensor | None = None) -> Tensor:
        j, b = teacher_probs.shape[:2]
        return torch.full((b, j), 1.0 / j, device=teacher_probs.device)


@register_weighting("fixed")
class FixedWeighting:
    """Constant per-teacher weights (normalised to sum 1), e.g. from validation scores."""

    def __init__(self, weights: Sequence[float]) -> None:
        w = torch.as_tensor(list(weights), dtype=torch.float32)
        if w.ndim != 1 or w.numel() == 0 or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"fixed weights must be non-negative with positive sum, got {weights}")
        self.weights = w / w.sum()

    def __call__(self, teacher_probs: Tensor, mask: Tensor | None = None) -> Tensor:
        j, b = teacher_probs.shape[:2]
        if self.weights.numel() != j:
            raise ValueError(f"{self.weights.numel()} fixed weights given for {j} teachers")
        return self.weights.to(teacher_probs.device).expand(b, j).clone()


@register_weighting("select_best")
class SelectBestWeighting:
    """One-hot on the teacher with the lowest per-sample Dice loss (ties -> first teacher);
    ``empty`` as in :func:`dice_losses` (default: hard Dice on slices without foreground)."""

    def __init__(self, classes: DiceClasses = "all", empty: EmptyRule = "hard_dice") -> None:
        dice_losses(torch.zeros(1, 1, 2, 1, 1), torch.zeros(1, 1, 1), classes, empty)  # validates
        self.classes, self.empty = classes, empty

    def __call__(self, teacher_probs: Tensor, mask: Tensor | None = None) -> Tensor:
        losses = dice_losses(teacher_probs, mask, self.classes, self.empty)
        best = torch.argmin(losses, dim=1)
        return torch.nn.functional.one_hot(best, losses.shape[1]).to(teacher_probs.dtype)


@register_weighting("paper")
class PaperWeighting:
    """Paper's literal ``w_j = L_j / sum_k L_k``: higher loss -> HIGHER weight (a flaw).

    Kept only to reproduce the paper (soft Dice everywhere, ``empty="soft"``). All-zero losses
    fall back to equal weights.
    """

    def __init__(self, eps: float = 1e-12, classes: DiceClasses = "all",
                 empty: EmptyRule = "soft") -> None:
        dice_losses(torch.zeros(1, 1, 2, 1, 1), torch.zeros(1, 1, 1), classes, empty)  # validates
        self.eps, self.classes, self.empty = eps, classes, empty

    def __call__(self, teacher_probs: Tensor, mask: Tensor | None = None) -> Tensor:
        losses = dice_losses(teacher_probs, mask, self.classes, self.empty) + self.eps
        return losses / losses.sum(dim=1, keepdim=True)


@register_weighting("inverse_dice_loss")
class InverseDiceLossWeighting:
    """DEFAULT rule. ``mode="softmax"`` (default): ``softmax(-L_j/τ)``; ``"inverse"``: 1/(L_j+eps).

    Softmax with τ = 0.1 is the default because it drives a corrupted teacher's weight to ~0
    (``inverse`` still leaves it 5-15 %, see tests/common/test_bad_teacher.py). On slices
    without foreground ``L_j`` is the hard (argmax) Dice loss (``empty``, see
    :func:`dice_losses`): teachers are ranked by their errors, not by their confidence.
    """

    def __init__(self, mode: Mode = "softmax", tau: float = 0.1, eps: float = 1e-6,
                 classes: DiceClasses = "all", empty: EmptyRule = "hard_dice") -> None:
        _lower_is_better(torch.zeros(1, 1), mode, tau, eps)  # validates mode
        dice_losses(torch.zeros(1, 1, 2, 1, 1), torch.zeros(1, 1, 1), classes, empty)  # validates
        self.mode, self.tau, self.eps, self.classes, self.empty = mode, tau, eps, classes, empty

    def __call__(self, teacher_probs: Tensor, mask: Tensor | None = None) -> Tensor:
        losses = dice_losses(teacher_probs, mask, self.classes, self.empty)
        return _lower_is_better(losses, self.mode, self.tau, self.eps)


@register_weighting("entropy")
class EntropyWeighting:
    """Label-free: ``w_j ∝ 1/(H_j + eps)`` or ``softmax(-H_j/tau)``, H_j = mean pixel entropy.

    Prefers confident teachers; works with ``mask=None`` (unlabeled proxy data). Note that
    confidence is not correctness: a confidently wrong teacher is preferred too.
    """

    def __init__(self, mode: Mode = "inverse", tau: float = 0.1, eps: float = 1e-6) -> None:
        _lower_is_better(torch.zeros(1, 1), mode, tau, eps)
        self.mode, self.tau, self.eps = mode, tau, eps

    def __call__(self, teacher_probs: Tensor, mask: Tensor | None = None) -> Tensor:
        return _lower_is_better(mean_entropy(teacher_probs), self.mode, self.tau, self.eps)
