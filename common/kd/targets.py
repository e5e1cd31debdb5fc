"""What a hospital site computes and sends per batch of proxy slices: teacher targets.

A site never sends features or weights, only, per teacher ``j`` and proxy slice ``b``:
logits, two attention maps (early / deep features) and two region-contrast scalars. The list
of those fields, their stored dtypes, per-slice shapes and attention-map sizes is
:mod:`common.teacher_fields` (torch-free, shared with the wire schema and the cache);
:class:`TeacherTargets` is the one in-memory type, ``(J, B, ...)`` end to end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from common.kd.functional import (
    ATForm,
    compute_attention,
    fuse_probs,
    region_contrast,
    resize_attention,
    teacher_probs,
)
from common.models.base import SegModel, SegOutput
from common.teacher_fields import FIELD_NAMES, FeatureTaps

__all__ = ["FeatureTaps", "TeacherTargets", "compute_teacher_targets", "tapped_features"]


def tapped_features(out: SegOutput, taps: FeatureTaps = "emkd") -> tuple[Tensor, Tensor]:
    """The two feature maps distillation uses, ``(first, second)``.

    ``"emkd"`` (default): ``(features[0], features[-1])``, the early map at 1/2 and the end of
    the encoder, the layers of the EMKD reference code. ``"decoder"``: ``(features[-1],
    decoder)``, the last feature maps of the encoder and of the decoder, as the paper's text
    says. :class:`TeacherTargets` keeps the first in ``at_early``/``rc_early`` and the second
    in ``at_deep``/``rc_deep`` whichever the taps.
    """
    if taps == "emkd":
        return out.features[0], out.features[-1]
    if taps == "decoder":
        if out.decoder is None:
            raise ValueError("feature_taps='decoder' needs a model whose SegOutput has decoder")
        return out.features[-1], out.decoder
    raise ValueError(f"unknown feature taps {taps!r}; valid: decoder, emkd")


def _names() -> tuple[str, ...]:
    return FIELD_NAMES


def _check_same(targets: Sequence[TeacherTargets], free_dim: int, how: str) -> None:
    """Every field must agree across ``targets`` in all dims but ``free_dim``."""
    if not targets:
        raise ValueError(f"cannot {how} an empty list of TeacherTargets")
    for n in _names():
        shapes = {tuple(s for d, s in enumerate(getattr(t, n).shape) if d != free_dim)
                  for t in targets}
        if len(shapes) > 1:
            hint = "; compute targets with a common at_sizes" if how == "stack" else ""
            raise ValueError(f"cannot {how} {n} of shapes {sorted(shapes)}{hint}")


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
        """Concatenate teachers (each ``J_i`` >= 1, same ``B``) along the teacher axis (dim 0).

        All teachers must send maps of the same sizes: compute them with a common
        ``at_sizes`` in :func:`compute_teacher_targets` when architectures differ.
        """
        _check_same(targets, 0, "stack")
        return TeacherTargets(**{n: torch.cat([getattr(t, n) for t in targets]) for n in _names()})

    @staticmethod
    def concat(parts: Sequence[TeacherTargets]) -> TeacherTargets:
        """Concatenate consecutive proxy batches (same ``J``) along the batch axis (dim 1)."""
        _check_same(parts, 1, "concat")
        return TeacherTargets(**{n: torch.cat([getattr(p, n) for p in parts], 1)
                                 for n in _names()})

    def map(self, fn: Callable[[Tensor], Tensor]) -> TeacherTargets:
        """Apply ``fn`` to every tensor field (e.g. a dtype or device change)."""
        return TeacherTargets(**{n: fn(getattr(self, n)) for n in _names()})

    def index(self, batch_idx: Tensor | slice | Sequence[int]) -> TeacherTargets:
        """Select slices along the batch axis (dim 1) for every teacher."""
        idx = batch_idx if isinstance(batch_idx, (slice, Tensor)) else torch.as_tensor(batch_idx)
        return self.map(lambda v: v[:, idx])

    def select(self, teachers: Sequence[int]) -> TeacherTargets:
        """Keep only the teachers ``teachers`` (teacher axis 0, in that order)."""
        idx = list(teachers)
        return self.map(lambda v: v[idx])

    def teacher(self, j: int) -> TeacherTargets:
        """Targets of teacher ``j`` alone (J = 1)."""
        return self.map(lambda v: v[j : j + 1])

    def as_dict(self) -> dict[str, Tensor]:
        """``{field name: tensor}`` in field order."""
        return {n: getattr(self, n) for n in _names()}

    def rows(self, a: int, b: int) -> dict[str, np.ndarray]:
        """Slices ``a:b`` of every field as float32 numpy ``(J, b-a, ...)`` (the same as
        ``CachedTargets.rows``, so a reader takes either)."""
        return {n: getattr(self, n)[:, a:b].float().numpy() for n in _names()}

    def site_arrays(self) -> dict[str, np.ndarray]:
        """One site's answer (J = 1) as ``{name: (B, ...) numpy}`` in field order: what the
        site encodes on the wire and the cache writes (:mod:`common.teacher_fields`)."""
        if self.num_teachers != 1:
            raise ValueError(f"one site's arrays need J = 1 targets, got J = {self.num_teachers}")
        return {n: getattr(self, n)[0].detach().cpu().numpy() for n in _names()}

    @staticmethod
    def from_site_arrays(arrays: Mapping[str, np.ndarray]) -> TeacherTargets:
        """Inverse of :meth:`site_arrays`: float32 J = 1 targets."""
        return TeacherTargets(**{n: torch.from_numpy(arrays[n].astype(np.float32))[None]
                                 for n in _names()})

    def to(self, device: torch.device | str) -> TeacherTargets:
        """Copy of the targets on ``device``."""
        return self.map(lambda v: v.to(device))

    def fused_probs(self, weights: Tensor, temperature: float = 1.0) -> Tensor:
        """``sum_j w_bj softmax(z_j / T)``: ``weights (B, J)`` -> ``(B, K, H, W)``."""
        return fuse_probs(teacher_probs(self.logits, temperature), weights)


if tuple(f.name for f in fields(TeacherTargets)) != FIELD_NAMES:  # pragma: no cover
    raise ImportError("TeacherTargets' fields differ from common.teacher_fields.FIELD_NAMES")

def compute_teacher_targets(
    model: SegModel,
    images: Tensor,
    masks: Tensor,
    at_form: ATForm = "zagoruyko",
    p: float = 2,
    at_sizes: tuple[tuple[int, int], tuple[int, int]] | None = None,
    taps: FeatureTaps = "emkd",
) -> TeacherTargets:
    """Run one teacher on proxy slices and build its (J = 1) targets.

    ``images``: ``(B, 1, H, W)``; ``masks``: ``(B, H, W)`` long (needed by region contrast).
    Puts ``model`` in eval mode and runs under ``torch.no_grad``; attention maps and region
    contrast are taken on the two maps of :func:`tapped_features` (``taps``; default
    ``features[0]`` (early) and ``features[-1]`` (deep)).
    ``at_sizes = ((h0, w0), (h1, w1))`` resizes the two attention maps to sizes agreed by all
    sites (bilinear, re-normalised for the zagoruyko form) so that teachers with different
    strides can be stacked; ``None`` keeps each feature map's native size.
    """
    model.eval()
    with torch.no_grad():
        out = model.seg_forward(images)
        early, deep = tapped_features(out, taps)
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
