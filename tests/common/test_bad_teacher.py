"""Robustness to a bad teacher: the default weighting ignores a corrupted site.

Pure engine test (no Flower, deterministic): two decent teachers (noisy versions of the proxy
masks) and one that returns random logits or inverted foreground (the corruptions of
:mod:`coordinator.distill.corrupt`). It checks the fused KD target; trained students are checked
in tests/coordinator/test_robustness_student.py:

* the default ``inverse_dice_loss`` (``mode="softmax"``, tau 0.1) gives the bad teacher ~0 %
  weight and keeps the soft fused target within 0.02 soft Dice of the clean 2-good-teacher
  fusion; ``equal`` loses more than 0.1 soft Dice;
* ``mode="inverse"`` (w ∝ 1/L) still gives the bad teacher 5-15 % weight: its hard (argmax)
  target stays within 0.02, but the soft target loses 0.1-0.3 soft Dice.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from common.kd.functional import fuse_probs, soft_dice_loss_per_sample, teacher_probs
from common.kd.fusion import build_weighting
from coordinator.distill.corrupt import invert_foreground, random_logits


def _masks(tiny_sites: dict) -> Tensor:
    from coordinator.distill.proxy import load_proxy

    masks = torch.from_numpy(load_proxy(tiny_sites["proxy"], 32).masks).long()
    return masks[masks.flatten(1).sum(1) > 0]  # foreground slices


def _good(mask: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    onehot = torch.nn.functional.one_hot(mask, 2).permute(0, 3, 1, 2).float()
    return 3.0 * (2 * onehot - 1) + 1.0 * torch.randn(onehot.shape, generator=g)


def _bad(mask: Tensor, kind: str) -> Tensor:
    if kind == "random":
        return random_logits(torch.zeros(mask.shape[0], 2, *mask.shape[1:]), 4.0, seed=99)
    return invert_foreground(_good(mask, 7))  # confidently inverted foreground


def _hard_dice(probs: Tensor, mask: Tensor) -> float:
    pred = (probs[:, 1] > 0.5).float().flatten(1)
    gt = (mask == 1).float().flatten(1)
    return float(((2 * (pred * gt).sum(1) + 1) / (pred.sum(1) + gt.sum(1) + 1)).mean())


def _fuse(logits: list[Tensor], mask: Tensor, weighting: str, **kw: object
          ) -> tuple[float, float, float]:
    """(soft Dice, hard Dice, mean weight of the last teacher) of the fused target."""
    probs = teacher_probs(torch.stack(logits), 1.0)
    w = build_weighting(weighting, **kw)(probs, mask)
    fused = fuse_probs(probs, w)
    soft = 1 - float(soft_dice_loss_per_sample(fused, mask).mean())
    return soft, _hard_dice(fused, mask), float(w[:, -1].mean())


@pytest.mark.parametrize("kind", ["random", "inverted"])
def test_default_weighting_shrugs_off_a_bad_teacher(tiny_sites: dict, kind: str) -> None:
    mask = _masks(tiny_sites)
    good = [_good(mask, 1), _good(mask, 2)]
    three = [*good, _bad(mask, kind)]
    clean = _fuse(good, mask, "inverse_dice_loss")
    robust = _fuse(three, mask, "inverse_dice_loss", mode="inverse")
    sharp = _fuse(three, mask, "inverse_dice_loss")  # the default: softmax, tau 0.1
    naive = _fuse(three, mask, "equal")
    print(f"{kind} (soft, hard, w_bad): clean {clean} inverse {robust} softmax {sharp} "
          f"equal {naive}")
    assert abs(robust[1] - clean[1]) <= 0.02 and robust[2] < 0.2
    assert naive[0] < clean[0] - 0.1 and naive[0] < robust[0] - 0.1
    assert abs(sharp[0] - clean[0]) <= 0.02 and sharp[2] < 0.01
