"""Distillation and segmentation losses (paper Sec. 3.2, Eqs. 2-7), with documented fixes.

Every loss is an ``nn.Module`` with ``reduction: "mean" | "none"``; ``"none"`` returns one
value per sample, shape ``(B,)``, because the multi-teacher engine weights each teacher per
input. Teacher-side inputs are what a site sends (:class:`common.kd.targets.TeacherTargets`):
probabilities / logits, attention maps and region-contrast scalars -- never raw features.

Deviations from the paper's literal text (paper forms kept as options for reproduction):

* KL direction: default Hinton ``KL(p_t || p_s)``; ``direction="student_teacher"`` is Eq. 2.
* Attention transfer: default Zagoruyko & Komodakis (channel mean of ``|f|^p``, L2-normalised
  over space, mean squared difference); ``form="paper"`` is Eq. 3 (channel sum of ``|f|``,
  ``|| d / ||d||_2 ||_1``), which is invariant to the scale of ``d`` and so carries no
  magnitude information -- kept for reproduction only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.models.base import SegOutput
from common.registry import Registry

if TYPE_CHECKING:
    from common.kd.targets import TeacherTargets

Reduction = Literal["mean", "none"]
ATForm = Literal["zagoruyko", "paper"]
KLDirection = Literal["teacher_student", "student_teacher"]

LOSSES: Registry[nn.Module] = Registry("loss")
register_loss = LOSSES.register

_EPS = 1e-8


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


# --------------------------------------------------------------------------- attention maps
def attention_map(feat: Tensor, p: float = 2) -> Tensor:
    """Zagoruyko attention: ``(B, C, H, W)`` -> ``(B, H, W)``, channel mean of ``|f|^p``,
    L2-normalised over the ``H*W`` positions (each sample's map has unit L2 norm)."""
    b, _, h, w = feat.shape
    a = feat.abs().pow(p).mean(dim=1).reshape(b, h * w)
    return F.normalize(a, p=2, dim=1).reshape(b, h, w)


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
    if form == "zagoruyko":
        out = F.normalize(out.flatten(1), p=2, dim=1).reshape_as(out)
    return out


# --------------------------------------------------------------------------- logit KD
def teacher_probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Softened class probabilities ``softmax(z / T)`` over the class axis.

    ``logits``: ``(B, K, H, W)`` or stacked teachers ``(J, B, K, H, W)`` (class axis is -3).
    """
    return torch.softmax(logits / temperature, dim=-3)


@register_loss("kl")
class LogitKL(nn.Module):
    """Pixel-wise KL distillation (Hinton), times ``T^2``.

    ``forward(student_logits (B,K,H,W), teacher_probs (B,K,H,W)) -> scalar | (B,)``.
    The teacher side is already probabilities (``softmax(z_t/T)``, possibly a weighted fusion
    of several teachers). ``"teacher_student"``: ``sum_k p_t (log p_t - log p_s)``;
    ``"student_teacher"`` (paper Eq. 2): ``sum_k p_s (log p_s - log p_t)`` with ``p_t`` clamped
    at ``1e-8`` inside the log. Summed over classes, averaged over pixels.
    """

    def __init__(
        self,
        temperature: float = 4.0,
        direction: KLDirection = "teacher_student",
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        if direction not in ("teacher_student", "student_teacher"):
            raise ValueError(f"unknown KL direction {direction!r}")
        self.temperature, self.direction, self.reduction = temperature, direction, reduction

    def forward(self, student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
        if student_logits.shape != teacher_probs.shape:
            raise ValueError(f"student {student_logits.shape} != teacher {teacher_probs.shape}")
        log_ps = F.log_softmax(student_logits / self.temperature, dim=1)
        if self.direction == "teacher_student":
            kl = torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * log_ps
        else:
            log_pt = teacher_probs.clamp_min(_EPS).log()
            kl = log_ps.exp() * (log_ps - log_pt)
        per_sample = kl.sum(dim=1).flatten(1).mean(dim=1) * self.temperature**2
        return _reduce(per_sample, self.reduction)


# --------------------------------------------------------------------------- attention transfer
@register_loss("at")
class AttentionTransfer(nn.Module):
    """Attention-transfer loss against a precomputed teacher attention map.

    ``forward(student_feat (B,Cs,hs,ws), teacher_at (B,ht,wt)) -> scalar | (B,)``.
    The student map is computed in the same ``form``; if its size differs from the teacher's
    it is resized bilinearly to ``(ht, wt)`` and, for the zagoruyko form, re-normalised to unit
    L2 norm after resizing (interpolation changes the norm; the teacher map is unit-norm).
    ``zagoruyko``: mean over positions of ``(at_s - at_t)^2``.
    ``paper``: ``|| d / ||d||_2 ||_1`` with ``d = at_s - at_t`` (scale-free; reproduction only).
    """

    def __init__(
        self, p: float = 2, form: ATForm = "zagoruyko", reduction: Reduction = "mean"
    ) -> None:
        super().__init__()
        compute_attention(torch.zeros(1, 1, 1, 1), form, p)  # validates ``form``
        self.p, self.form, self.reduction = p, form, reduction

    def student_map(self, student_feat: Tensor, size: tuple[int, int]) -> Tensor:
        """Student attention ``(B, *size)`` in this loss's form (resized, re-normalised)."""
        return resize_attention(compute_attention(student_feat, self.form, self.p), size, self.form)

    def forward(self, student_feat: Tensor, teacher_at: Tensor) -> Tensor:
        at_s = self.student_map(student_feat, (teacher_at.shape[-2], teacher_at.shape[-1]))
        d = (at_s - teacher_at).flatten(1)
        if self.form == "zagoruyko":
            per_sample = d.pow(2).mean(dim=1)
        else:
            per_sample = (d / d.norm(p=2, dim=1, keepdim=True).clamp_min(_EPS)).abs().sum(dim=1)
        return _reduce(per_sample, self.reduction)


# --------------------------------------------------------------------------- region contrast
def region_contrast(feat: Tensor, mask: Tensor) -> Tensor:
    """EMKD region contrast (Qin et al. 2021): ``feat (B,C,h,w)``, ``mask (B,H,W)`` -> ``(B,)``.

    The mask is resized (nearest) to ``(h, w)``; ``m1 = mask > 0`` (foreground), ``m0`` the rest.
    ``p0 = sum(f*m0) / max(sum(m0), eps)``, ``p1 = sum(f*m1) / (sum(m1) + 1)`` (both ``(B, C)``);
    returns ``cosine_similarity(p0, p1)`` (0 when a prototype is all zeros).
    """
    m = F.interpolate(mask.unsqueeze(1).float(), size=feat.shape[-2:], mode="nearest")
    m1 = (m > 0).to(feat.dtype)
    m0 = 1.0 - m1
    p0 = (feat * m0).sum(dim=(2, 3)) / m0.sum(dim=(2, 3)).clamp_min(_EPS)
    p1 = (feat * m1).sum(dim=(2, 3)) / (m1.sum(dim=(2, 3)) + 1.0)
    return F.cosine_similarity(p0, p1, dim=1, eps=_EPS)


@register_loss("rc")
class RegionContrastLoss(nn.Module):
    """``forward(student_feat (B,C,h,w), mask (B,H,W), teacher_rc (B,))`` = ``(rc_s - rc_t)^2``."""

    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, student_feat: Tensor, mask: Tensor, teacher_rc: Tensor) -> Tensor:
        per_sample = (region_contrast(student_feat, mask) - teacher_rc).pow(2)
        return _reduce(per_sample, self.reduction)


@register_loss("mid")
class MidLoss(nn.Module):
    """Paper Eq. 4: AT + RC summed over the (early, deep) feature pairs.

    ``forward(student_feats (f_early, f_deep), teacher_at (at_early (B,h0,w0), at_deep),
    teacher_rc (rc_early (B,), rc_deep (B,)), mask (B,H,W)) -> scalar | (B,)``.
    """

    def __init__(
        self, at_form: ATForm = "zagoruyko", p: float = 2, reduction: Reduction = "mean"
    ) -> None:
        super().__init__()
        self.at = AttentionTransfer(p=p, form=at_form, reduction="none")
        self.rc = RegionContrastLoss(reduction="none")
        self.reduction = reduction

    def forward(
        self,
        student_feats: tuple[Tensor, Tensor],
        teacher_at: tuple[Tensor, Tensor],
        teacher_rc: tuple[Tensor, Tensor],
        mask: Tensor,
    ) -> Tensor:
        per_sample = torch.zeros((), device=mask.device)
        for feat, at_t, rc_t in zip(student_feats, teacher_at, teacher_rc, strict=True):
            per_sample = per_sample + self.at(feat, at_t) + self.rc(feat, mask, rc_t)
        return _reduce(per_sample, self.reduction)


# --------------------------------------------------------------------------- segmentation
@register_loss("seg")
class SegLoss(nn.Module):
    """Paper Eq. 5: ``dice_weight * Dice + lovasz_weight * Lovasz-Softmax``.

    ``forward(logits (B,K,H,W), mask (B,H,W) long) -> scalar | (B,)``. Uses smp's
    ``DiceLoss(mode="multiclass", classes=[1])`` and ``LovaszLoss(mode="multiclass")``. With
    ``"mean"`` both are smp's batch-aggregated losses (statistics pooled over the batch, as in
    the paper's training); ``"none"`` evaluates them on each sample alone, so the mean of the
    per-sample values equals ``"mean"`` only when B == 1 or the samples are identical.
    Note smp's Dice gives 0 for a sample/batch with no foreground pixels in ``mask``.
    """

    def __init__(
        self, dice_weight: float = 0.2, lovasz_weight: float = 0.3, reduction: Reduction = "mean"
    ) -> None:
        super().__init__()
        self.dice = smp.losses.DiceLoss(mode="multiclass", classes=[1])
        self.lovasz = smp.losses.LovaszLoss(mode="multiclass")
        self.dice_weight, self.lovasz_weight, self.reduction = dice_weight, lovasz_weight, reduction

    def _batch(self, logits: Tensor, mask: Tensor) -> Tensor:
        dice_term = self.dice(logits, mask)
        return self.dice_weight * dice_term + self.lovasz_weight * self.lovasz(logits, mask)

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        mask = mask.long()
        if self.reduction == "mean":
            return self._batch(logits, mask)
        per_sample = [self._batch(logits[i : i + 1], mask[i : i + 1]) for i in range(len(mask))]
        return _reduce(torch.stack(per_sample), self.reduction)


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


# --------------------------------------------------------------------------- full KD objective
@register_loss("kd")
class KDLoss(nn.Module):
    """Paper Eq. 6/7: ``Seg + alpha * Mid + beta * KL`` for J (possibly weighted) teachers.

    ``forward(student: SegOutput, mask (B,H,W), teacher: TeacherTargets | None,
    weights (B,J) | None) -> {"total", "seg", "mid", "kl"}`` (scalars, or ``(B,)`` with
    ``reduction="none"``). KL uses the fused teacher ``sum_j w_bj softmax(z_j/T)`` per sample and
    pixel; Mid is ``sum_j w_bj Mid_j`` per sample. ``weights=None`` requires J == 1 (mono
    teacher). ``student_only=True`` or ``teacher=None`` gives plain Seg (no-KD baseline).
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
    ) -> None:
        super().__init__()
        self.seg = SegLoss(dice_weight, lovasz_weight, reduction=reduction)
        self.mid = MidLoss(at_form=at_form, p=p, reduction="none")
        self.kl = LogitKL(temperature=temperature, direction=kl_direction, reduction="none")
        self.alpha, self.beta, self.student_only = alpha, beta, student_only
        self.temperature, self.reduction = temperature, reduction

    def forward(
        self,
        student: SegOutput,
        mask: Tensor,
        teacher: TeacherTargets | None = None,
        weights: Tensor | None = None,
    ) -> dict[str, Tensor]:
        seg = self.seg(student.logits, mask)
        if self.student_only or teacher is None:
            zero = torch.zeros_like(seg)
            return {"total": seg, "seg": seg, "mid": zero, "kl": zero}
        w = self._check_weights(teacher, weights, student.logits)
        kl = self.kl(student.logits, _fuse(teacher_probs(teacher.logits, self.temperature), w))
        feats = (student.features[0], student.features[-1])
        mids = [
            self.mid(feats, (teacher.at_early[j], teacher.at_deep[j]),
                     (teacher.rc_early[j], teacher.rc_deep[j]), mask)
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
        return weights.to(logits.dtype)


def _fuse(probs: Tensor, weights: Tensor) -> Tensor:
    """``probs (J,B,K,H,W)``, ``weights (B,J)`` -> ``sum_j w_bj probs_j`` ``(B,K,H,W)``."""
    return torch.einsum("jbkhw,bj->bkhw", probs, weights.to(probs.dtype))
