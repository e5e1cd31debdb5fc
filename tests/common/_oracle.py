"""A scale-aware "oracle" teacher and an analytic proxy for the plan-bridge tests.

The phantom, in mm around the slice centre: a bright disc (the organ, radius ``R`` = 20 mm,
label 1) and, on some slices, a bright ring 26-34 mm out (label 0). Intensity alone cannot tell
them apart; the oracle knows, in *its own* pixels, how far from the centre the organ reaches
(a window of radius ``1.1 R / t`` px for its plan's spacing ``t``), like a network that learned
the anatomy at one spacing. Fed slices at another spacing, it truncates the organ or takes the
ring: exactly the failure that serving each teacher in its own plan avoids.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from common.data.native import place, resize_stack
from common.data.plan import Plan
from common.models.base import SegModel, SegOutput

RADIUS_MM = 20.0
NATIVE_SP, NATIVE_SIDE = 0.5, 200  # the proxy's own grid: 100 mm field at 0.5 mm


class OracleTeacher(SegModel):
    """Logits ``(0, 4 (x - 0.5) - 4 relu(d - r))`` with ``d`` the distance (px) to the centre
    and ``r = 1.1 R / spacing``; features: the image average-pooled by 2 and 8 (2 channels)."""

    def __init__(self, spacing: float) -> None:
        super().__init__()
        self.r = 1.1 * RADIUS_MM / spacing

    def seg_forward(self, x: Tensor) -> SegOutput:
        h, w = x.shape[-2:]
        yy = torch.arange(h, dtype=x.dtype) - (h - 1) / 2
        xx = torch.arange(w, dtype=x.dtype) - (w - 1) / 2
        d = torch.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)
        fg = 4 * (x - 0.5) - 4 * F.relu(d - self.r)
        logits = torch.cat([torch.zeros_like(fg), fg], dim=1)
        feats = tuple(torch.cat([F.avg_pool2d(x, k), F.avg_pool2d(fg, k)], 1) for k in (2, 8))
        return SegOutput(logits, feats)


def native_proxy(ring: list[bool], shift_mm: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 200, 200)`` float32 images (0 / 1) and uint8 masks at 0.5 mm, one per slice."""
    c = (np.arange(NATIVE_SIDE) - (NATIVE_SIDE - 1) / 2) * NATIVE_SP
    imgs, masks = [], []
    for i, with_ring in enumerate(ring):
        y, x = c[:, None] - shift_mm * i, c[None, :] + shift_mm * i / 2
        d = np.sqrt(y ** 2 + x ** 2)
        organ = d <= RADIUS_MM
        bright = organ | ((d >= 26) & (d <= 34) & with_ring)
        imgs.append(bright.astype(np.float32))
        masks.append(organ.astype(np.uint8))
    return np.stack(imgs), np.stack(masks)


def prepare(images: np.ndarray, masks: np.ndarray, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """The native proxy on ``plan``'s grid, as ``common.data.native.prepare_loaded`` does it:
    ``(N,1,S,S)`` float32 (bilinear, padded with the minimum), ``(N,S,S)`` uint8 (nearest)."""
    assert plan.spacing is not None
    hw = (round(NATIVE_SIDE * NATIVE_SP / plan.spacing[0]),
          round(NATIVE_SIDE * NATIVE_SP / plan.spacing[1]))
    off = ((plan.size - hw[0]) // 2, (plan.size - hw[1]) // 2)
    img = place(resize_stack(images, hw, linear=True), plan.size, off, float(images.min()))
    msk = place(resize_stack(masks, hw, linear=False), plan.size, off, 0)
    return img[:, None].astype(np.float32), msk.astype(np.uint8)


def mri_plan(spacing: float, size: int) -> Plan:
    """An MRI plan at isotropic in-plane ``spacing`` mm and side ``size``."""
    return Plan(size=size, spacing=(spacing, spacing), norm="mri")
