"""Teacher weighting rules, fusion and renormalisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from common.kd.functional import fuse_probs, teacher_probs
from common.kd.fusion import (
    WEIGHTINGS,
    build_weighting,
    dice_losses,
    mean_entropy,
    renormalise,
)
from common.registry import RegistryError


def _mask(b: int = 3, hw: int = 8) -> Tensor:
    mask = torch.zeros(b, hw, hw, dtype=torch.long)
    mask[:, 2:6, 1:5] = 1
    mask[1, 0, :] = 1  # samples differ a little
    return mask


def _good_and_broken(mask: Tensor) -> Tensor:
    """Probabilities ``(J=2, B, 2, H, W)``: teacher 0 close to the mask, teacher 1 random."""
    torch.manual_seed(0)
    onehot = torch.nn.functional.one_hot(mask, 2).permute(0, 3, 1, 2).float()
    good = 4.0 * (2 * onehot - 1) + 0.3 * torch.randn_like(onehot)
    broken = 3.0 * torch.randn_like(onehot)
    return teacher_probs(torch.stack([good, broken]), 1.0)


def _assert_rows_sum_to_one(w: Tensor, b: int, j: int) -> None:
    assert w.shape == (b, j)
    assert torch.allclose(w.sum(dim=1), torch.ones(b)) and (w >= 0).all()


def test_broken_teacher_weighting_inverse_vs_paper() -> None:
    mask = _mask()
    probs = _good_and_broken(mask)
    losses = dice_losses(probs, mask)
    assert (losses[:, 0] < losses[:, 1]).all()
    for kw in ({}, {"mode": "softmax", "tau": 0.1}):
        w = build_weighting("inverse_dice_loss", **kw)(probs, mask)
        _assert_rows_sum_to_one(w, 3, 2)
        assert (w[:, 1] < w[:, 0]).all(), "default rule must down-weight the broken teacher"
    w_paper = build_weighting("paper")(probs, mask)
    _assert_rows_sum_to_one(w_paper, 3, 2)
    assert (w_paper[:, 1] > w_paper[:, 0]).all(), "paper rule up-weights the worse teacher"
    assert torch.allclose(w_paper, losses / losses.sum(dim=1, keepdim=True))


def test_inverse_hand_computed() -> None:
    probs = torch.zeros(2, 1, 2, 1, 2)  # J=2, B=1, K=2, 1x2
    probs[0, 0, 1] = torch.tensor([[1.0, 1.0]])  # perfect on mask [[1, 1]]: L = 0
    probs[0, 0, 0] = 1 - probs[0, 0, 1]
    probs[1, 0, 1] = torch.tensor([[1.0, 0.0]])  # L = 1 - (2+1)/(1+2+1) = 0.25
    probs[1, 0, 0] = 1 - probs[1, 0, 1]
    mask = torch.tensor([[[1, 1]]])
    fg = {"classes": "foreground"}
    w = build_weighting("inverse_dice_loss", mode="inverse", eps=0.25, **fg)(probs, mask)
    assert torch.allclose(w, torch.tensor([[(1 / 0.25) / (4 + 2), (1 / 0.5) / (4 + 2)]]))
    ws = build_weighting("inverse_dice_loss", mode="softmax", tau=0.25, **fg)(probs, mask)
    e = torch.exp(torch.tensor(-1.0))
    assert torch.allclose(ws, torch.tensor([[1 / (1 + e), e / (1 + e)]]))


def test_dice_losses_over_all_classes_by_hand() -> None:
    """Empty 1x4 slice, soft teachers: A says p_fg = 0.1, B says p_fg = 0.9 everywhere.

    fg: A 1 - 1/(0.4+1) = 0.285714, B 1 - 1/(3.6+1) = 0.782609;
    bg: A 1 - (2*3.6+1)/(3.6+4+1) = 0.046512, B 1 - (2*0.4+1)/(0.4+4+1) = 0.666667.
    """
    p_fg = torch.tensor([0.1, 0.9]).view(2, 1, 1, 1, 1).expand(2, 1, 1, 1, 4)
    probs = torch.cat([1 - p_fg, p_fg], dim=2)  # (J=2, B=1, K=2, 1, 4)
    mask = torch.zeros(1, 1, 4, dtype=torch.long)
    fg = dice_losses(probs, mask, "foreground")
    assert torch.allclose(fg, torch.tensor([[0.285714, 0.782609]]), atol=1e-6)
    both = dice_losses(probs, mask)
    assert torch.allclose(both, torch.tensor([[(0.285714 + 0.046512) / 2,
                                                (0.782609 + 0.666667) / 2]]), atol=1e-6)
    # soft losses everywhere (empty="soft", the former default), softmax tau 0.1: B gets ~0.4 %
    w = build_weighting("inverse_dice_loss", empty="soft")(probs, mask)
    assert float(w[0, 1]) == pytest.approx(1 / (1 + torch.exp(torch.tensor(5.58525)).item()),
                                           rel=1e-3)
    # default empty="hard_dice" (changed on purpose): argmax A = no foreground ->
    # fg 1 - 1/1 = 0, bg 1 - (2*4+1)/(4+4+1) = 0; B = foreground everywhere -> fg 1 - 1/(4+1)
    # = 0.8, bg 1 - 1/(0+4+1) = 0.8; L = (0, 0.8) -> w_B = 1 / (1 + e^8)
    hard = dice_losses(probs, mask, empty="hard_dice")
    assert torch.allclose(hard, torch.tensor([[0.0, 0.8]]), atol=1e-6)
    w = build_weighting("inverse_dice_loss")(probs, mask)
    assert float(w[0, 1]) == pytest.approx(1 / (1 + math.exp(8.0)), rel=1e-4)


def test_select_best_and_ties() -> None:
    mask = _mask()
    probs = _good_and_broken(mask)
    w = build_weighting("select_best")(probs, mask)
    assert torch.equal(w, torch.tensor([[1.0, 0.0]] * 3))
    tie = torch.stack([probs[0], probs[0], probs[1]])
    assert torch.equal(build_weighting("select_best")(tie, mask)[:, 0], torch.ones(3))


def test_entropy_prefers_confident_teacher_without_labels() -> None:
    confident = teacher_probs(torch.tensor([5.0, -5.0]).view(1, 2, 1, 1).expand(2, 2, 4, 4), 1.0)
    unsure = teacher_probs(torch.tensor([0.2, 0.0]).view(1, 2, 1, 1).expand(2, 2, 4, 4), 1.0)
    probs = torch.stack([unsure, confident])
    for mode in ("inverse", "softmax"):
        w = build_weighting("entropy", mode=mode)(probs, None)
        _assert_rows_sum_to_one(w, 2, 2)
        assert (w[:, 1] > w[:, 0]).all()
    uniform = torch.full((1, 1, 2, 1, 1), 0.5)
    assert mean_entropy(uniform).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


@pytest.mark.parametrize("name", ["select_best", "paper", "inverse_dice_loss"])
def test_label_rules_need_mask(name: str) -> None:
    with pytest.raises(ValueError, match="mask"):
        build_weighting(name)(torch.full((2, 1, 2, 2, 2), 0.5), None)


def test_equal_and_fixed() -> None:
    probs = torch.full((3, 2, 2, 2, 2), 0.5)
    assert torch.allclose(build_weighting("equal")(probs, None), torch.full((2, 3), 1 / 3))
    w = build_weighting("fixed", weights=[1.0, 1.0, 2.0])(probs, None)
    assert torch.allclose(w, torch.tensor([[0.25, 0.25, 0.5]] * 2))
    with pytest.raises(ValueError, match="3 teachers"):
        build_weighting("fixed", weights=[1.0, 1.0])(probs, None)
    for bad in ([], [-1.0, 2.0], [0.0, 0.0]):
        with pytest.raises(ValueError):
            build_weighting("fixed", weights=bad)


def test_fuse_probs_per_sample() -> None:
    probs = torch.rand(2, 2, 3, 2, 2)
    probs = probs / probs.sum(dim=2, keepdim=True)
    w = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    fused = fuse_probs(probs, w)
    assert torch.allclose(fused[0], probs[0, 0])
    assert torch.allclose(fused[1], 0.25 * probs[0, 1] + 0.75 * probs[1, 1])
    assert torch.allclose(fused.sum(dim=1), torch.ones(2, 2, 2))


def test_renormalise_drops_teacher() -> None:
    w = torch.tensor([[0.5, 0.3, 0.2], [0.0, 1.0, 0.0]])
    out = renormalise(w, torch.tensor([True, False, True]))
    assert torch.allclose(out, torch.tensor([[0.5 / 0.7, 0.0, 0.2 / 0.7], [0.5, 0.0, 0.5]]))
    per_sample = renormalise(w, torch.tensor([[True, True, False], [True, True, True]]))
    assert torch.allclose(per_sample, torch.tensor([[0.625, 0.375, 0.0], [0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="no available"):
        renormalise(w, torch.tensor([[False] * 3, [True] * 3]))


def test_unknown_weighting_lists_valid_names() -> None:
    assert set(WEIGHTINGS.names()) == {
        "entropy", "equal", "fixed", "inverse_dice_loss", "learned", "paper", "select_best"
    }
    with pytest.raises(RegistryError, match="valid: entropy, equal, fixed"):
        build_weighting("average")


def _leaky(p_fg: float, b: int = 1, hw: int = 8) -> Tensor:
    """Probabilities ``(B, 2, hw, hw)`` with ``p_fg`` of foreground at every pixel."""
    fg = torch.full((b, 1, hw, hw), p_fg, dtype=torch.float64)
    return torch.cat([1 - fg, fg], dim=1)


def test_empty_slices_rank_errors_not_confidence() -> None:
    """On a slice without foreground, two teachers with the same (perfect, empty) hard
    prediction but leaks of 1e-5 and 1e-4 used to get 0.85 / 0.15 (at 384 px); now they get
    1/2 each, and a teacher with 3 false-positive pixels gets less (hand computed below)."""
    n = 384 * 384
    mask = torch.zeros(1, 384, 384, dtype=torch.long)
    a, b = _leaky(1e-5, hw=384), _leaky(1e-4, hw=384)
    probs = torch.stack([a, b])
    old = build_weighting("inverse_dice_loss", empty="soft")(probs, mask)
    assert float(old[0, 0]) == pytest.approx(0.846, abs=0.01)  # the flaw, reproduced
    for name in ("inverse_dice_loss", "paper"):
        kw = {"empty": "hard_dice"} if name == "paper" else {}
        w = build_weighting(name, **kw)(probs, mask)
        assert torch.allclose(w, torch.full((1, 2), 0.5, dtype=w.dtype)), name
    fp = a.clone()
    fp[0, :, 0, :3] = torch.tensor([[0.4], [0.6]], dtype=fp.dtype)  # 3 pixels argmax foreground
    w = build_weighting("inverse_dice_loss")(torch.stack([b, fp]), mask)
    # fp teacher: fg 1 - 1/(3+1) = 0.75; bg inter = pred = n-3, gt n: 1 - (2n-5)/(2n-2)
    loss_fp = (0.75 + 3 / (2 * n - 2)) / 2
    assert float(w[0, 1]) == pytest.approx(1 / (1 + math.exp(loss_fp / 0.1)), rel=1e-6)
    assert float(w[0, 1]) < 0.03
    assert torch.equal(build_weighting("select_best")(torch.stack([fp, b]), mask),
                       torch.tensor([[0.0, 1.0]], dtype=w.dtype))
    eq = build_weighting("inverse_dice_loss", empty="equal")(torch.stack([b, fp]), mask)
    assert torch.allclose(eq, torch.full((1, 2), 0.5, dtype=eq.dtype))
    with pytest.raises(ValueError, match="empty must be one of"):
        build_weighting("inverse_dice_loss", empty="bogus")


def test_hard_dice_only_on_empty_slices() -> None:
    """A slice with foreground keeps the soft loss: the hard rule touches empty rows only."""
    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    mask[1, 2:5, 2:5] = 1
    probs = teacher_probs(torch.randn(2, 2, 2, 8, 8, generator=torch.Generator().manual_seed(3)),
                          1.0)
    soft, hard = dice_losses(probs, mask), dice_losses(probs, mask, empty="hard_dice")
    assert torch.equal(soft[1], hard[1]) and not torch.allclose(soft[0], hard[0])
