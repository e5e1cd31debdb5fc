"""Pure tensor maths shared by the losses, the teacher targets and the weightings.

Attention maps (Zagoruyko and the paper's Eq. 3 form), region contrast (EMKD), per-sample soft
Dice, temperature softmax and the weighted fusion of teacher probabilities. No ``nn.Module``, no
registry: :mod:`common.kd.losses`, :mod:`common.kd.targets` and :mod:`common.kd.fusion` all
import from here, and this module imports none of them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ATForm = Literal["zagoruyko", "paper"]

EPS = 1e-8

__all__ = [
    "ATForm",
    "EPS",
    "attention_map",
    "attention_map_paper",
    "compute_attention",
    "fuse_probs",
    "hard_dice_loss_per_sample",
    "hard_labels",
    "one_hot_labels",
    "region_contrast",
    "resize_attention",
    "soft_dice_loss_per_sample",
    "teacher_probs",
    "unit_maps",
    "valid_at",
]


# --------------------------------------------------------------------------- attention maps
def unit_maps(at: Tensor, eps: float = 1e-12) -> Tensor:
    """Maps ``(B, h, w)`` each scaled to unit L2 norm over its ``h*w`` positions (an all-zero
    map stays zero): the one normalisation of Zagoruyko attention maps.

    Where it runs on the teacher-output path, and why none of these is redundant (in floating
    point the normalisation is not idempotent: re-normalising a unit map changes its last
    bits, so dropping any of these calls would change the student's inputs):

    1. :func:`attention_map`: the map as computed (Zagoruyko's definition);
    2. :func:`resize_attention`: after a bilinear resize to the agreed size (only when the
       size changes; interpolation changes the norm);
    3. :func:`common.kd.plan_bridge.bridged_teacher_outputs` (rule e): after the map is mapped
       from the teacher's grid back to the query's (only when the grids differ);
    4. :class:`coordinator.distill.dataset.DistillDataset`: per item, after the fp16 cache
       round trip and the joint augmentation (rotations zero-pad the map);
    5. :class:`common.kd.losses.AttentionTransfer` (``eps = EPS``): after padded positions
       are zeroed (only with a validity map).

    Paper-form maps are never normalised.
    """
    return F.normalize(at.flatten(1), p=2, dim=1, eps=eps).reshape_as(at)


def attention_map(feat: Tensor, p: float = 2) -> Tensor:
    """Zagoruyko attention: ``(B, C, H, W)`` -> ``(B, H, W)``, channel mean of ``|f|^p``,
    L2-normalised over the ``H*W`` positions (each sample's map has unit L2 norm)."""
    return unit_maps(feat.abs().pow(p).mean(dim=1))


def attention_map_paper(feat: Tensor) -> Tensor:
    """Paper Eq. 3 attention: ``(B, C, H, W)`` -> ``(B, H, W)``, channel sum of ``|f|``."""
    return feat.abs().sum(dim=1)


def compute_attention(feat: Tensor, form: ATForm = "zagoruyko", p: float = 2) -> Tensor:
    """Attention map of ``feat`` ``(B, C, H, W)`` in the given form -> ``(B, H, W)``."""
    if form == "zagoruyko":
        return attention_map(feat, p)
    if form == "paper":
        return attention_map_paper(feat)
    raise ValueError(f"unknown attention form {form!r}; valid: paper, zagoruyko")


def resize_attention(at: Tensor, size: tuple[int, int], form: ATForm = "zagoruyko") -> Tensor:
    """Bilinearly resize attention maps ``(B, h, w)`` -> ``(B, *size)``.

    Zagoruyko maps are re-normalised to unit L2 norm after resizing (interpolation changes
    the norm); paper-form maps are unnormalised and are only interpolated.
    """
    if tuple(at.shape[-2:]) == tuple(size):
        return at
    out = F.interpolate(at.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    out = out.squeeze(1)
    return unit_maps(out) if form == "zagoruyko" else out


# --------------------------------------------------------------------------- valid pixels
def valid_at(valid: Tensor, size: tuple[int, int], strict: bool = True) -> Tensor:
    """Validity ``(B, H, W)`` (1 = a real pixel, 0 = augmentation padding) -> ``(B, *size)``.

    Area-resampled; ``strict``: a position is valid only if (almost) all the pixels it covers
    are (a coarse cell that straddles the padded border mixes padding into its warped value:
    used for the attention maps); otherwise if most of them are (region membership, like the
    nearest-neighbour resizing of the label: used by region contrast).
    """
    if tuple(valid.shape[-2:]) == tuple(size):
        return (valid > 0.5).to(valid.dtype)
    area = F.interpolate(valid.unsqueeze(1).float(), size=size, mode="area").squeeze(1)
    return (area > (0.999 if strict else 0.5)).to(valid.dtype)


# --------------------------------------------------------------------------- region contrast
def region_contrast(feat: Tensor, mask: Tensor, valid: Tensor | None = None) -> Tensor:
    """EMKD region contrast (Qin et al. 2021): ``feat (B,C,h,w)``, ``mask (B,H,W)`` -> ``(B,)``.

    The mask is resized (nearest) to ``(h, w)``; ``m1 = mask > 0`` (foreground), ``m0`` the rest.
    ``p0 = sum(f*m0) / max(sum(m0), eps)``, ``p1 = sum(f*m1) / (sum(m1) + 1)`` (both ``(B, C)``);
    returns ``cosine_similarity(p0, p1)`` (0 when a prototype is all zeros). ``valid (B,H,W)``
    (optional) drops padded positions from both regions (see :func:`valid_at`), so the
    background prototype is not diluted by the zero-padded border of a rotated slice.
    """
    m = F.interpolate(mask.unsqueeze(1).float(), size=feat.shape[-2:], mode="nearest")
    m1 = (m > 0).to(feat.dtype)
    m0 = 1.0 - m1
    if valid is not None:
        v = valid_at(valid, (feat.shape[-2], feat.shape[-1]), strict=False)
        v = v.unsqueeze(1).to(feat.dtype)
        m0, m1 = m0 * v, m1 * v
    p0 = (feat * m0).sum(dim=(2, 3)) / m0.sum(dim=(2, 3)).clamp_min(EPS)
    p1 = (feat * m1).sum(dim=(2, 3)) / (m1.sum(dim=(2, 3)) + 1.0)
    return F.cosine_similarity(p0, p1, dim=1, eps=EPS)


# --------------------------------------------------------------------------- hard labels
def hard_labels(scores: Tensor, dim: int = 1) -> Tensor:
    """Index of the largest score along ``dim``: ``(B, K, H, W)`` -> ``(B, H, W)`` int64.

    Identical to ``scores.argmax(dim)``, ties (the first maximal index) and NaN (a NaN counts
    as the maximum) included, but fast on CPU: torch's ``argmax`` over a non-last axis costs
    ~15x ``max(dim).indices`` (16 ms against 1.2 ms for ``(1, 2, 384, 384)``, 1 thread). With
    ``K == 2`` it is one comparison ``s1 > s0`` (~0.1 ms; ties give 0), otherwise
    ``max(dim).indices``. Scores may be logits or probabilities (softmax keeps the order).
    """
    if scores.shape[dim] != 2:
        return scores.max(dim=dim).indices
    s0, s1 = scores.select(dim, 0), scores.select(dim, 1)
    nan1 = s1.isnan()
    if bool(nan1.any()):  # argmax takes a NaN as the maximum, the first one on a tie
        return ((s1 > s0) | (nan1 & ~s0.isnan())).long()
    return (s1 > s0).long()


def one_hot_labels(probs: Tensor) -> Tensor:
    """One-hot hard prediction (:func:`hard_labels`, i.e. the argmax): ``(B, K, H, W)`` ->
    ``(B, K, H, W)`` of 0/1 in ``probs``' dtype."""
    return F.one_hot(hard_labels(probs), probs.shape[1]).movedim(-1, 1).to(probs.dtype)


# --------------------------------------------------------------------------- Dice
def soft_dice_loss_per_sample(probs: Tensor, mask: Tensor, smooth: float = 1.0,
                              cls: int = 1) -> Tensor:
    """1 - soft Dice of class ``cls`` (default the foreground, 1): ``probs (B,K,H,W)``,
    ``mask (B,H,W)`` -> ``(B,)``.

    ``(2 sum(p g) + smooth) / (sum p + sum g + smooth)``; the smoothing keeps empty-mask slices
    defined (a teacher predicting less foreground on an empty slice gets a lower loss).
    """
    p = probs[:, cls].flatten(1)
    g = (mask == cls).to(probs.dtype).flatten(1)
    inter = (p * g).sum(dim=1)
    return 1.0 - (2.0 * inter + smooth) / (p.sum(dim=1) + g.sum(dim=1) + smooth)


def hard_dice_loss_per_sample(probs: Tensor, mask: Tensor, smooth: float = 1.0,
                              cls: int = 1) -> Tensor:
    """:func:`soft_dice_loss_per_sample` of the argmax (one-hot) prediction -> ``(B,)``.

    Confidence plays no part: two teachers with the same hard prediction get the same loss. On
    an empty mask the smoothing gives ``1 - 1/(FP + 1)`` for ``FP`` false-positive pixels, so an
    empty prediction scores 0 (the empty-empty = 1 Dice rule) and errors are graded by count.
    """
    return soft_dice_loss_per_sample(one_hot_labels(probs), mask, smooth, cls)


# --------------------------------------------------------------------------- probabilities
def teacher_probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Softened class probabilities ``softmax(z / T)`` over the class axis.

    ``logits``: ``(B, K, H, W)`` or stacked teachers ``(J, B, K, H, W)`` (class axis is -3).
    """
    return torch.softmax(logits / temperature, dim=-3)


def fuse_probs(teacher_probs: Tensor, weights: Tensor) -> Tensor:
    """``teacher_probs (J,B,K,H,W)``, ``weights (B,J)`` -> ``sum_j w_bj p_j`` ``(B,K,H,W)``."""
    return torch.einsum("jbkhw,bj->bkhw", teacher_probs, weights.to(teacher_probs.dtype))
