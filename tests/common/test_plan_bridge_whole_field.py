"""Teacher queries over the whole field (``bridged_teacher_outputs(..., whole_field=True)``):
a query field wider than the teacher's canvas is answered from Gaussian-blended windows (MONAI
sliding window) instead of the background logit; the centre tile's own answer, the attention
maps and RC stay exactly as before."""

from __future__ import annotations

import numpy as np
import torch

from common.data.plan import Plan
from common.data.window import window_blend
from common.kd.plan_bridge import bridged_teacher_outputs
from common.models.base import SegModel, SegOutput

CPU = torch.device("cpu")
QUERY = Plan(size=40, spacing=(1.5, 1.5), norm="mri")  # 60 mm field
SMALL = Plan(size=32, spacing=(0.75, 0.75), norm="mri")  # 24 mm canvas: field = 80 px
WIDE = Plan(size=96, spacing=(0.75, 0.75), norm="mri")  # 72 mm canvas: holds the field


class PixelTeacher(SegModel):
    """Translation-equivariant teacher: foreground logit ``8 (x - 0.5)`` per pixel; features
    the image pooled by 2 and 8."""

    def seg_forward(self, x: torch.Tensor) -> SegOutput:
        fg = 8.0 * (x - 0.5)
        feats = tuple(torch.cat([torch.nn.functional.avg_pool2d(x, k)] * 2, 1) for k in (2, 8))
        return SegOutput(torch.cat([torch.zeros_like(fg), fg], dim=1), feats)


def _corner_organ() -> tuple[np.ndarray, np.ndarray]:
    """Two query slices (40 px at 1.5 mm) with a 6 x 7 px organ in the top-left corner, far
    outside the teacher's centred 24 mm (query rows / columns 12..27)."""
    masks = np.zeros((2, 40, 40), np.uint8)
    masks[:, 2:8, 3:10] = 1
    return masks[:, None].astype(np.float32), masks


def _dice(logits: torch.Tensor, masks: np.ndarray) -> float:
    pred, gt = logits[0].numpy().argmax(axis=1) > 0, masks > 0
    return 2.0 * float((pred & gt).sum()) / float(pred.sum() + gt.sum())


def test_a_corner_organ_outside_the_teacher_canvas_is_answered_over_the_whole_field() -> None:
    images, masks = _corner_organ()
    old = bridged_teacher_outputs(PixelTeacher(), images, masks, CPU, QUERY, SMALL)
    new = bridged_teacher_outputs(PixelTeacher(), images, masks, CPU, QUERY, SMALL,
                                  whole_field=True)
    assert _dice(old.logits, masks) == 0.0  # centre tile only: the corner is background
    assert _dice(new.logits, masks) == 1.0  # a pixel-wise teacher over the whole field
    # the centre tile's pixels (query 12..27, each from two field pixels inside it) keep the
    # centre tile's answer exactly; maps and RC are the centre tile's in both modes
    assert torch.equal(new.logits[..., 12:28, 12:28], old.logits[..., 12:28, 12:28])
    for key in ("at_early", "at_deep", "rc_early", "rc_deep"):
        assert torch.equal(getattr(new, key), getattr(old, key))


def test_a_field_that_fits_the_teacher_canvas_is_answered_as_before() -> None:
    images, masks = _corner_organ()
    old = bridged_teacher_outputs(PixelTeacher(), images, masks, CPU, QUERY, WIDE)
    new = bridged_teacher_outputs(PixelTeacher(), images, masks, CPU, QUERY, WIDE,
                                  whole_field=True)
    assert torch.equal(new.logits, old.logits)


def test_window_blend_keeps_signed_outputs_unnormalised() -> None:
    """Blending the identity (a per-pixel output equal to the input, negative values too) over
    overlapping windows gives the input back: the Gaussian weights sum to 1 at every pixel."""
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 3.0, (2, 50, 70)).astype(np.float32)
    out = window_blend(lambda x: x[:, None], image, 32)
    assert out.shape == (2, 1, 50, 70)
    np.testing.assert_allclose(out[:, 0], image, atol=1e-4)
