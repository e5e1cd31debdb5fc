"""The plan's canvas padding is not anatomy: it is known per slice, and with
``kd.padding = "exclude"`` it changes neither the segmentation nor the KL term."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.native import canvas_extent
from common.kd.losses import KDLoss, SegLoss
from common.kd.targets import TeacherTargets
from common.models.base import SegOutput
from coordinator.distill.proxy import ProxySet


def test_canvas_extent_by_hand() -> None:
    assert canvas_extent((180, 224), (38, 16), 256) == (38, 218, 16, 240)  # padded both ways
    assert canvas_extent((300, 100), (-22, 78), 256) == (0, 256, 78, 178)  # rows cropped
    assert canvas_extent((64, 64), (0, 0), 64) == (0, 64, 0, 64)


def test_proxy_extents_bound_the_real_pixels(tmp_path: Path) -> None:
    """Non-square 448 x 360 slices at 0.5 mm on a 1 mm / 256 px canvas: every slice's extent
    is the resampled 224 x 180 slice, centred; outside it, only the padding value and label 0."""
    from common.data.layout import discover_dataset
    from common.data.plan import Plan
    from common.data.slices import load_volumes
    from coordinator.distill.proxy import proxy_from_volumes
    from tests.common._nifti_cases import LPS_05, write_dataset

    root = write_dataset(tmp_path / "ds", LPS_05)
    plan = Plan(size=256, spacing=(1.0, 1.0))
    vols = load_volumes(discover_dataset(root), None, 256, plan=plan)
    proxy = proxy_from_volumes(vols, plan=plan)
    assert proxy.extents is not None and proxy.extents.shape == (len(proxy), 4)
    y0, y1, x0, x1 = proxy.extents[0]
    assert sorted([y1 - y0, x1 - x0]) == [180, 224]
    assert (y0 + y1 - 256) in (-1, 0) and (x0 + x1 - 256) in (-1, 0)
    for i in range(len(proxy)):
        real = proxy.real_pixels(i).astype(bool)
        outside = proxy.images[i, 0][~real]
        assert np.all(outside == outside[0]) and proxy.masks[i][~real].max() == 0
        assert real.sum() == (y1 - y0) * (x1 - x0)


def test_dataset_valid_map_is_the_extent_unless_asked_not_to() -> None:
    from coordinator.distill.dataset import DistillDataset

    images = np.zeros((1, 1, 8, 8), np.float32)
    proxy = ProxySet(images, np.zeros((1, 8, 8), np.uint8), ["a:0"], ["h"],
                     extents=np.array([[2, 6, 1, 8]], np.int32))
    want = torch.zeros(8, 8)
    want[2:6, 1:8] = 1
    assert torch.equal(DistillDataset(proxy, None)[0]["valid"], want)
    assert torch.equal(DistillDataset(proxy, None, canvas_padding=False)[0]["valid"],
                       torch.ones(8, 8))


def _embed(x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``x (..., 4, 6)`` placed at rows 3:7, cols 2:8 of a ``(..., 10, 12)`` canvas of ``fill``."""
    out = fill.clone()
    out[..., 3:7, 2:8] = x
    return out


BOX = (slice(3, 7), slice(2, 8))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_seg_loss_on_a_padded_canvas_equals_the_tight_slice(reduction: str) -> None:
    """With ``valid``, arbitrary logits on the padding leave Dice + Lovasz unchanged; without
    it they count; an all-ones ``valid`` is the same as none."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 4, 6, generator=g)
    mask = (torch.rand(2, 4, 6, generator=g) > 0.5).long()
    big_logits = _embed(logits, torch.randn(2, 2, 10, 12, generator=g) * 3)
    big_mask = _embed(mask, torch.zeros(2, 10, 12, dtype=torch.long))
    valid = _embed(torch.ones(2, 4, 6), torch.zeros(2, 10, 12))
    loss = SegLoss(reduction=reduction)  # type: ignore[arg-type]
    tight = loss(logits, mask)
    torch.testing.assert_close(loss(big_logits, big_mask, valid), tight)
    assert not torch.allclose(loss(big_logits, big_mask), tight, atol=1e-3)
    torch.testing.assert_close(loss(logits, mask, torch.ones(2, 4, 6)), tight)


def test_kd_seg_and_kl_do_not_see_the_canvas() -> None:
    """KDLoss (no intermediate term) on a slice padded into a larger canvas, with ``valid``,
    equals KDLoss on the tight slice; ``seg_on_padding=True`` (the old rule) does not."""
    g = torch.Generator().manual_seed(1)
    s_logits = torch.randn(2, 2, 4, 6, generator=g)
    t_logits = torch.randn(1, 2, 2, 4, 6, generator=g)
    mask = (torch.rand(2, 4, 6, generator=g) > 0.5).long()

    def targets(logits: torch.Tensor) -> TeacherTargets:
        z = torch.zeros(1, 2)
        return TeacherTargets(logits=logits, at_early=torch.rand(1, 2, 2, 3),
                              at_deep=torch.rand(1, 2, 1, 1), rc_early=z, rc_deep=z)

    feats = (torch.rand(2, 3, 2, 3), torch.rand(2, 3, 1, 1))
    tight = KDLoss(alpha=0.0)(SegOutput(s_logits, feats), mask, targets(t_logits))
    big = SegOutput(_embed(s_logits, torch.randn(2, 2, 10, 12, generator=g)), feats)
    big_t = targets(_embed(t_logits, torch.randn(1, 2, 2, 10, 12, generator=g)))
    big_mask = _embed(mask, torch.zeros(2, 10, 12, dtype=torch.long))
    valid = _embed(torch.ones(2, 4, 6), torch.zeros(2, 10, 12))
    masked = KDLoss(alpha=0.0)(big, big_mask, big_t, None, valid)
    for key in ("seg", "kl", "total"):
        torch.testing.assert_close(masked[key], tight[key])
    old = KDLoss(alpha=0.0, seg_on_padding=True)(big, big_mask, big_t, None, valid)
    torch.testing.assert_close(old["kl"], tight["kl"])
    assert not torch.allclose(old["seg"], tight["seg"], atol=1e-3)


def test_fill_rule_spends_the_canvas_on_anatomy(tmp_path: Path) -> None:
    """A 512 px student on 448 x 360 slices at 0.5 mm: ``median`` keeps 0.5 mm and pads the
    canvas (448 x 360 real pixels), ``fill`` refines to 0.4375 mm so the slice spans 512 px."""
    from coordinator.distill.config import StudentTrainConfig
    from coordinator.distill.proxy import load_proxy
    from tests.common._nifti_cases import LPS_05, write_dataset

    root = write_dataset(tmp_path / "ds", LPS_05)
    for rule, spacing, sides in (("median", 0.5, [360, 448]), ("fill", 0.4375, [411, 512])):
        student = StudentTrainConfig(size=512, spacing_rule=rule)  # type: ignore[arg-type]
        proxy = load_proxy(root, 512, fill=student.fills_canvas)
        assert proxy.plan is not None and proxy.plan.spacing == pytest.approx((spacing,) * 2)
        assert proxy.extents is not None
        y0, y1, x0, x1 = proxy.extents[0]
        assert sorted([int(y1 - y0), int(x1 - x0)]) == sides


def test_a_mostly_padded_canvas_is_named_with_the_size_that_fits() -> None:
    from coordinator.distill.proxy import canvas_note

    def proxy(side: int, box: int) -> ProxySet:
        lo = (side - box) // 2
        return ProxySet(np.zeros((3, 1, side, side), np.float32),
                        np.zeros((3, side, side), np.uint8), ["a:0", "a:1", "a:2"], ["h"] * 3,
                        extents=np.tile([lo, lo + box, lo, lo + box], (3, 1)).astype(np.int32))

    note = canvas_note(proxy(256, 96))  # the demo phantoms' 96 px slices on a 256 px canvas
    assert note is not None and "86 % padding" in note and "size of 96" in note
    assert "7.1x fewer pixels" in note and "left out of the loss" in note
    assert "counted in the loss" in str(canvas_note(proxy(256, 96), excluded=False))
    assert canvas_note(proxy(64, 64)) is None and canvas_note(proxy(128, 96)) is None
    assert proxy(256, 96).real_fraction() == pytest.approx((96 / 256) ** 2)
