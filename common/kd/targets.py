"""What a hospital site computes and sends per batch of proxy slices: teacher targets.

A site never sends features or weights, only, per teacher ``j`` and proxy slice ``b``:
logits, two attention maps (early / deep features) and two region-contrast scalars.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from common.kd.losses import ATForm, compute_attention, region_contrast, resize_attention
from common.models.base import SegModel

__all__ = ["TeacherTargets", "compute_teacher_targets"]


@dataclass
class TeacherTargets:
    """Targets of ``J`` teachers for ``B`` proxy slices.

    Attributes:
        logits: ``(J, B, K, H, W)`` float raw teacher logits.
        at_early: ``(J, B, h0, w0)`` attention maps of ``features[0]``.
        at_deep: ``(J, B, h1, w1)`` attention maps of ``features[-1]``.
        rc_early: ``(J, B)`` region contrast of ``features[0]``.
        rc_deep: ``(J, B)`` region contrast of ``features[-1]``.
    """

    logits: Tensor
    at_early: Tensor
    at_deep: Tensor
    rc_early: Tensor
    rc_deep: Tensor

    def __post_init__(self) -> None:
        j, b = self.logits.shape[:2]
        for f in fields(self):
            t: Tensor = getattr(self, f.name)
            if tuple(t.shape[:2]) != (j, b):
                raise ValueError(f"{f.name} leading dims {tuple(t.shape[:2])} != (J, B) {(j, b)}")

    @property
    def num_teachers(self) -> int:
        """``J``."""
        return int(self.logits.shape[0])

    @property
    def batch_size(self) -> int:
        """``B``."""
        return int(self.logits.shape[1])

    @staticmethod
    def stack(targets: Sequence[TeacherTargets]) -> TeacherTargets:
        """Concatenate teachers (each ``J_i`` >= 1, same ``B``) along the teacher axis.

        All teachers must send maps of the same sizes: compute them with a common
        ``at_sizes`` in :func:`compute_teacher_targets` when architectures differ.
        """
        if not targets:
            raise ValueError("cannot stack an empty list of TeacherTargets")
        names = [f.name for f in fields(targets[0])]
        for n in names:
            shapes = {tuple(getattr(t, n).shape[1:]) for t in targets}
            if len(shapes) > 1:
                raise ValueError(f"cannot stack {n} of shapes {sorted(shapes)}; compute "
                                 "targets with a common at_sizes")
        parts = {n: torch.cat([getattr(t, n) for t in targets]) for n in names}
        return TeacherTargets(**parts)

    def index(self, batch_idx: Tensor | slice | Sequence[int]) -> TeacherTargets:
        """Select slices along the batch axis (dim 1) for every teacher."""
        idx = batch_idx if isinstance(batch_idx, (slice, Tensor)) else torch.as_tensor(batch_idx)
        return TeacherTargets(**{f.name: getattr(self, f.name)[:, idx] for f in fields(self)})

    def teacher(self, j: int) -> TeacherTargets:
        """Targets of teacher ``j`` alone (J = 1)."""
        return TeacherTargets(**{f.name: getattr(self, f.name)[j : j + 1] for f in fields(self)})

    def to(self, device: torch.device | str) -> TeacherTargets:
        """Copy of the targets on ``device``."""
        return TeacherTargets(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def compute_teacher_targets(
    model: SegModel,
    images: Tensor,
    masks: Tensor,
    at_form: ATForm = "zagoruyko",
    p: float = 2,
    at_sizes: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> TeacherTargets:
    """Run one teacher on proxy slices and build its (J = 1) targets.

    ``images``: ``(B, 1, H, W)``; ``masks``: ``(B, H, W)`` long (needed by region contrast).
    Puts ``model`` in eval mode and runs under ``torch.no_grad``; attention maps and region
    contrast are taken on ``features[0]`` (early) and ``features[-1]`` (deep).
    ``at_sizes = ((h0, w0), (h1, w1))`` resizes the two attention maps to sizes agreed by all
    sites (bilinear, re-normalised for the zagoruyko form) so that teachers with different
    strides can be stacked; ``None`` keeps each feature map's native size.
    """
    model.eval()
    with torch.no_grad():
        out = model.seg_forward(images)
        early, deep = out.features[0], out.features[-1]
        at_e, at_d = compute_attention(early, at_form, p), compute_attention(deep, at_form, p)
        if at_sizes is not None:
            at_e = resize_attention(at_e, at_sizes[0], at_form)
            at_d = resize_attention(at_d, at_sizes[1], at_form)
        return TeacherTargets(
            logits=out.logits.float().unsqueeze(0),
            at_early=at_e.float().unsqueeze(0),
            at_deep=at_d.float().unsqueeze(0),
            rc_early=region_contrast(early, masks).float().unsqueeze(0),
            rc_deep=region_contrast(deep, masks).float().unsqueeze(0),
        )
