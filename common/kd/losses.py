"""Distillation and segmentation losses (paper Sec. 3.2, Eqs. 2-7), with documented fixes.

Every loss is an ``nn.Module`` with ``reduction: "mean" | "none"``; ``"none"`` returns one
value per sample, shape ``(B,)``, because the multi-teacher engine weights each teacher per
input. Teacher-side inputs are what a site sends (:class:`common.kd.targets.TeacherTargets`):
probabilities / logits, attention maps and region-contrast scalars -- never raw features.
The tensor maths (attention maps, region contrast, soft Dice, fusion) is in
:mod:`common.kd.functional`.

Deviations from the paper's literal text (paper forms kept as options for reproduction):

* KL direction: default Hinton ``KL(p_t || p_s)``; ``direction="student_teacher"`` is Eq. 2.
* Attention transfer: default Zagoruyko & Komodakis (channel mean of ``|f|^p``, L2-normalised
  over space, squared difference SUMMED over positions, in [0, 2] at any resolution);
  ``form="paper"`` is Eq. 3 (channel sum of ``|f|``, ``|| d / ||d||_2 ||_1``), which is
  invariant to the scale of ``d`` and so carries no magnitude information -- reproduction only.
* Padded pixels: an optional ``valid (B,H,W)`` mask (1 = real pixel, 0 = padding: the plan's
  canvas around a resampled slice, or what a geometric augmentation brought in) removes padded
  positions from the KL and AT means, from the student's region contrast and from Seg; padded
  teacher values then have no effect on the loss, and the loss does not depend on how much
  empty canvas surrounds the anatomy.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.kd.functional import (
    EPS,
    ATForm,
    compute_attention,
    region_contrast,
    resize_attention,
    unit_maps,
    valid_at,
)
from common.kd.targets import FeatureTaps, TeacherTargets, tapped_features
from common.models.base import SegOutput
from common.registry import Registry

Reduction = Literal["mean", "none"]
KLDirection = Literal["teacher_student", "student_teacher"]
ATReduce = Literal["sum", "mean"]

LOSSES: Registry[nn.Module] = Registry("loss")
register_loss = LOSSES.register

def build_loss(name: str, **kw: object) -> nn.Module:
    """Instantiate the registered loss ``name``; unknown names list the valid ones."""
    return LOSSES.build(name, **kw)


def _reduce(per_sample: Tensor, reduction: Reduction) -> Tensor:
    """``(B,)`` -> scalar mean (``"mean"``) or unchanged (``"none"``)."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _valid_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """Per-sample mean of ``values (B,H,W)`` over valid positions (all when ``valid`` is None);
    a sample without any valid position gives 0."""
    if valid is None:
        return values.flatten(1).mean(dim=1)
    v = valid.to(values.dtype).flatten(1)
    return (values.flatten(1) * v).sum(dim=1) / v.sum(dim=1).clamp_min(1.0)


# --------------------------------------------------------------------------- logit KD
@register_loss("kl")
class LogitKL(nn.Module):
    """Pixel-wise KL distillation (Hinton), times ``T^2`` unless ``t2_scale=False``.

    ``forward(student_logits (B,K,H,W), teacher_probs (B,K,H,W), valid (B,H,W) | None)
    -> scalar | (B,)``. The teacher side is already probabilities (``softmax(z_t/T)``, possibly
    a weighted fusion of several teachers). ``"teacher_student"``: ``sum_k p_t (log p_t -
    log p_s)``; ``"student_teacher"``: ``sum_k p_s (log p_s - log p_t)`` with ``p_t`` clamped at
    ``1e-8`` inside the log. Summed over classes, averaged over (valid) pixels. The ``T^2``
    factor (Hinton) keeps gradient sizes independent of ``T``; the paper's Eq. 2 is
    ``direction="student_teacher"`` with ``t2_scale=False`` (or ``temperature=1``).
    """

    def __init__(
        self,
        temperature: float = 4.0,
        direction: KLDirection = "teacher_student",
        reduction: Reduction = "mean",
        t2_scale: bool = True,
    ) -> None:
        super().__init__()
        if direction not in ("teacher_student", "student_teacher"):
            raise ValueError(f"unknown KL direction {direction!r}")
        self.temperature, self.direction, self.reduction = temperature, direction, reduction
        self.scale = temperature**2 if t2_scale else 1.0

    def forward(self, student_logits: Tensor, teacher_probs: Tensor,
                valid: Tensor | None = None) -> Tensor:
        if student_logits.shape != teacher_probs.shape:
            raise ValueError(f"student {student_logits.shape} != teacher {teacher_probs.shape}")
        log_ps = F.log_softmax(student_logits / self.temperature, dim=1)
        if self.direction == "teacher_student":
            kl = torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * log_ps
        else:
            log_pt = teacher_probs.clamp_min(EPS).log()
            kl = log_ps.exp() * (log_ps - log_pt)
        per_sample = _valid_mean(kl.sum(dim=1), valid) * self.scale
        return _reduce(per_sample, self.reduction)


# --------------------------------------------------------------------------- attention transfer
@register_loss("at")
class AttentionTransfer(nn.Module):
    """Attention-transfer loss against a precomputed teacher attention map.

    ``forward(student_feat (B,Cs,hs,ws), teacher_at (B,ht,wt), valid (B,H,W) | None)
    -> scalar | (B,)``. The student map is computed in the same ``form``; if its size differs
    from the teacher's it is resized bilinearly to ``(ht, wt)`` and, for the zagoruyko form,
    re-normalised to unit L2 norm. With ``valid``, both maps are zeroed at padded positions
    (:func:`~common.kd.functional.valid_at`) and, for zagoruyko, re-normalised over the rest.

    ``zagoruyko``, ``reduce="sum"`` (default): ``sum over positions of (at_s - at_t)^2 =
    ||at_s - at_t||^2`` of two non-negative unit vectors, i.e. ``2 - 2 cos`` in [0, 2] whatever
    the resolution. The sum is chosen over Zagoruyko's ``beta = 1000`` with a mean because the
    mean divides by ``h*w`` (36,864 positions of the early map at 384 px): a fixed beta would
    still tie the term's size to the input resolution, while the sum does not (EMKD also sums).
    ``reduce="mean"`` is the former ``mean`` over (valid) positions (~1e-5 of the other terms).
    ``paper``: ``|| d / ||d||_2 ||_1`` with ``d = at_s - at_t`` (scale-free; reproduction only;
    ``reduce`` does not apply).
    """

    def __init__(
        self, p: float = 2, form: ATForm = "zagoruyko", reduction: Reduction = "mean",
        reduce: ATReduce = "sum",
    ) -> None:
        super().__init__()
        compute_attention(torch.zeros(1, 1, 1, 1), form, p)  # validates ``form``
        if reduce not in ("sum", "mean"):
            raise ValueError(f"AT reduce must be 'sum' or 'mean', got {reduce!r}")
        self.p, self.form, self.reduction, self.reduce = p, form, reduction, reduce

    def student_map(self, student_feat: Tensor, size: tuple[int, int]) -> Tensor:
        """Student attention ``(B, *size)`` in this loss's form (resized, re-normalised)."""
        return resize_attention(compute_attention(student_feat, self.form, self.p), size, self.form)

    def forward(self, student_feat: Tensor, teacher_at: Tensor,
                valid: Tensor | None = None) -> Tensor:
        size = (teacher_at.shape[-2], teacher_at.shape[-1])
        at_s, at_t = self.student_map(student_feat, size), teacher_at
        v = None if valid is None else valid_at(valid, size).to(at_s.dtype)
        if v is not None:
            at_s, at_t = at_s * v, at_t * v
            if self.form == "zagoruyko":
                at_s, at_t = unit_maps(at_s, EPS), unit_maps(at_t, EPS)
        d = at_s - at_t
        if self.form == "paper":
            flat = d.flatten(1)
            per_sample = (flat / flat.norm(p=2, dim=1, keepdim=True).clamp_min(EPS)).abs().sum(1)
        elif self.reduce == "sum":
            per_sample = d.pow(2).flatten(1).sum(dim=1)
        else:
            per_sample = _valid_mean(d.pow(2), v)
        return _reduce(per_sample, self.reduction)


# --------------------------------------------------------------------------- region contrast
@register_loss("rc")
class RegionContrastLoss(nn.Module):
    """``forward(student_feat (B,C,h,w), mask (B,H,W), teacher_rc (B,), valid (B,H,W) | None)``
    = ``(rc_s - rc_t)^2``; ``valid`` drops padded positions from the student's regions.

    The teacher's ``rc_t`` is cached from the UN-augmented slice while ``rc_s`` is taken on the
    augmented one: prototype pooling ignores positions, so this is exact up to the network's
    own (lack of) equivariance and the padding, which ``valid`` removes. The remaining
    mismatch is measured in tests/common/test_kd_terms.py (kept as an approximation: warping
    prototypes would need the teacher's features, which a site never sends).
    """

    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, student_feat: Tensor, mask: Tensor, teacher_rc: Tensor,
                valid: Tensor | None = None) -> Tensor:
        per_sample = (region_contrast(student_feat, mask, valid) - teacher_rc).pow(2)
        return _reduce(per_sample, self.reduction)


@register_loss("mid")
class MidLoss(nn.Module):
    """Paper Eq. 4: AT + RC summed over the two tapped feature pairs.

    ``forward(student_feats (f_a, f_b), teacher_at (at_a (B,h0,w0), at_b), teacher_rc (rc_a (B,),
    rc_b (B,)), mask (B,H,W), valid (B,H,W) | None) -> scalar | (B,)``. ``rc_weight`` scales
    the RC term (1: Eq. 4; 0: attention transfer alone, RC not computed).
    """

    def __init__(
        self, at_form: ATForm = "zagoruyko", p: float = 2, reduction: Reduction = "mean",
        at_reduce: ATReduce = "sum", rc_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.at = AttentionTransfer(p=p, form=at_form, reduction="none", reduce=at_reduce)
        self.rc = RegionContrastLoss(reduction="none")
        self.reduction, self.rc_weight = reduction, rc_weight

    def forward(
        self,
        student_feats: tuple[Tensor, Tensor],
        teacher_at: tuple[Tensor, Tensor],
        teacher_rc: tuple[Tensor, Tensor],
        mask: Tensor,
        valid: Tensor | None = None,
    ) -> Tensor:
        per_sample = torch.zeros((), device=mask.device)
        for feat, at_t, rc_t in zip(student_feats, teacher_at, teacher_rc, strict=True):
            per_sample = per_sample + self.at(feat, at_t, valid)
            if self.rc_weight != 0.0:  # x * 1.0 == x: the default is Eq. 4 bit for bit
                per_sample = per_sample + self.rc_weight * self.rc(feat, mask, rc_t, valid)
        return _reduce(per_sample, self.reduction)


# --------------------------------------------------------------------------- segmentation
@register_loss("seg")
class SegLoss(nn.Module):
    """Paper Eq. 5: ``dice_weight * Dice + lovasz_weight * Lovasz-Softmax``.

    ``forward(logits (B,K,H,W), mask (B,H,W) long, valid (B,H,W) | None) -> scalar | (B,)``.
    Uses smp's ``DiceLoss(mode="multiclass", classes=[1])`` and
    ``LovaszLoss(mode="multiclass")``. With ``"mean"`` both are smp's batch-aggregated losses
    (statistics pooled over the batch, as in the paper's training); ``"none"`` evaluates them
    on each sample alone, so the mean of the per-sample values equals ``"mean"`` only when
    B == 1 or the samples are identical. ``valid`` (1 = real pixel): pixels with
    ``valid < 0.5`` are left out of both terms (smp's ``ignore_index``); without it every pixel
    counts. Note smp's Dice gives 0 for a sample/batch with no foreground pixels in ``mask``.
    """

    IGNORE = 255  # label value of left-out pixels (never a class: K <= 255)

    def __init__(
        self, dice_weight: float = 0.2, lovasz_weight: float = 0.3, reduction: Reduction = "mean"
    ) -> None:
        super().__init__()
        from segmentation_models_pytorch import losses as smp_losses  # heavy import, kept local

        self.dice = smp_losses.DiceLoss(mode="multiclass", classes=[1], ignore_index=self.IGNORE)
        self.lovasz = smp_losses.LovaszLoss(mode="multiclass", ignore_index=self.IGNORE)
        self.dice_weight, self.lovasz_weight, self.reduction = dice_weight, lovasz_weight, reduction

    def _batch(self, logits: Tensor, mask: Tensor) -> Tensor:
        dice_term = self.dice(logits, mask)
        return self.dice_weight * dice_term + self.lovasz_weight * self.lovasz(logits, mask)

    def forward(self, logits: Tensor, mask: Tensor, valid: Tensor | None = None) -> Tensor:
        mask = mask.long()
        if valid is not None:
            mask = mask.masked_fill(valid < 0.5, self.IGNORE)
        if self.reduction == "mean":
            return self._batch(logits, mask)
        per_sample = [self._batch(logits[i : i + 1], mask[i : i + 1]) for i in range(len(mask))]
        return _reduce(torch.stack(per_sample), self.reduction)


# --------------------------------------------------------------------------- full KD objective
WEIGHT_SUM_TOL = 1e-4


@register_loss("kd")
class KDLoss(nn.Module):
    """Paper Eq. 6/7: ``Seg + alpha * Mid + beta * KL`` for J (possibly weighted) teachers.

    ``forward(student: SegOutput, mask (B,H,W), teacher: TeacherTargets | None,
    weights (B,J) | None, valid (B,H,W) | None) -> {"total", "seg", "mid", "kl"}`` (scalars, or
    ``(B,)`` with ``reduction="none"``). KL uses the fused teacher ``sum_j w_bj softmax(z_j/T)``
    per sample and pixel; Mid is ``sum_j w_bj Mid_j`` per sample. Each weight row must sum to 1
    (within 1e-4). ``weights=None`` requires J == 1 (mono teacher). ``valid`` (1 = real pixel,
    0 = padding) leaves padding out of KL, AT and the student's RC, and out of Seg too unless
    ``seg_on_padding`` (then Seg trains padded pixels as background). ``feature_taps`` picks the
    student's two maps (:func:`~common.kd.targets.tapped_features`; the teacher targets must use
    the same taps). ``rc_weight`` scales RC inside Mid (0: Mid is attention transfer alone).
    ``student_only=True`` or ``teacher=None`` gives plain Seg (no-KD baseline).
    """

    def __init__(
        self,
        alpha: float = 0.1,
        beta: float = 0.1,
        temperature: float = 4.0,
        kl_direction: KLDirection = "teacher_student",
        at_form: ATForm = "zagoruyko",
        p: float = 2,
        student_only: bool = False,
        reduction: Reduction = "mean",
        dice_weight: float = 0.2,
        lovasz_weight: float = 0.3,
        at_reduce: ATReduce = "sum",
        kl_t2: bool = True,
        feature_taps: FeatureTaps = "emkd",
        seg_on_padding: bool = False,
        rc_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.seg = SegLoss(dice_weight, lovasz_weight, reduction=reduction)
        self.seg_on_padding = seg_on_padding
        self.mid = MidLoss(at_form=at_form, p=p, reduction="none", at_reduce=at_reduce,
                           rc_weight=rc_weight)
        self.kl = LogitKL(temperature=temperature, direction=kl_direction, reduction="none",
                          t2_scale=kl_t2)
        self.alpha, self.beta, self.student_only = alpha, beta, student_only
        self.temperature, self.reduction, self.feature_taps = temperature, reduction, feature_taps

    def forward(
        self,
        student: SegOutput,
        mask: Tensor,
        teacher: TeacherTargets | None = None,
        weights: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> dict[str, Tensor]:
        seg = self.seg(student.logits, mask, None if self.seg_on_padding else valid)
        if self.student_only or teacher is None:
            zero = torch.zeros_like(seg)
            return {"total": seg, "seg": seg, "mid": zero, "kl": zero}
        w = self._check_weights(teacher, weights, student.logits)
        kl = self.kl(student.logits, teacher.fused_probs(w, self.temperature), valid)
        feats = tapped_features(student, self.feature_taps)
        mids = [
            self.mid(feats, (teacher.at_early[j], teacher.at_deep[j]),
                     (teacher.rc_early[j], teacher.rc_deep[j]), mask, valid)
            for j in range(teacher.num_teachers)
        ]
        mid = (torch.stack(mids, dim=1) * w).sum(dim=1)
        mid, kl = _reduce(mid, self.reduction), _reduce(kl, self.reduction)
        total = seg + self.alpha * mid + self.beta * kl
        return {"total": total, "seg": seg, "mid": mid, "kl": kl}

    @staticmethod
    def _check_weights(teacher: TeacherTargets, weights: Tensor | None, logits: Tensor) -> Tensor:
        """Validated ``(B, J)`` weights (ones for a mono teacher with ``weights=None``)."""
        j, b = teacher.num_teachers, logits.shape[0]
        if weights is None:
            if j != 1:
                raise ValueError(f"{j} teachers need explicit (B, J) weights (see kd.fusion)")
            return torch.ones(b, 1, device=logits.device, dtype=logits.dtype)
        if tuple(weights.shape) != (b, j):
            raise ValueError(f"weights shape {tuple(weights.shape)} != (B, J) = {(b, j)}")
        err = (weights.detach().double().sum(dim=1) - 1.0).abs()
        if not bool((err <= WEIGHT_SUM_TOL).all()):
            row = int(err.argmax())
            raise ValueError(f"teacher weights of sample {row} sum to "
                             f"{float(weights[row].sum()):.6f}, not 1 (tolerance "
                             f"{WEIGHT_SUM_TOL}); normalise them (see kd.fusion.renormalise)")
        return weights.to(logits.dtype)
