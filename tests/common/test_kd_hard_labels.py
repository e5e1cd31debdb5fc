"""The fast argmax (``hard_labels``) equals ``argmax(dim=1)`` exactly, and the empty-slice
hard-Dice fallback computed on the empty rows only gives the losses of the all-rows form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.kd.functional import hard_labels, one_hot_labels, soft_dice_loss_per_sample
from common.kd.fusion import dice_losses

NAN = float("nan")


@pytest.mark.parametrize("k", [2, 3, 5])
def test_hard_labels_equal_argmax_with_ties(k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    x = torch.randint(0, 3, (4, k, 16, 16), generator=gen).float()  # many exact ties
    assert bool((x[:, 0] == x[:, 1]).any())
    got = hard_labels(x)
    assert got.dtype == torch.int64 and got.shape == (4, 16, 16)
    assert torch.equal(got, x.argmax(dim=1))
    assert torch.equal(x.max(dim=1).indices, x.argmax(dim=1))  # the K > 2 path


def test_hard_labels_by_hand_two_classes() -> None:
    # columns: s0 > s1, tie, s1 > s0, NaN in s1, NaN in s0, NaN in both
    x = torch.tensor([[[[2.0, 1.0, 0.0, 0.0, NAN, NAN]], [[1.0, 1.0, 3.0, NAN, 0.0, NAN]]]])
    assert hard_labels(x).tolist() == [[[0, 0, 1, 1, 0, 0]]]
    assert torch.equal(hard_labels(x), x.argmax(dim=1))


def test_hard_labels_by_hand_three_classes() -> None:
    x = torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [0.0, 1.0, 4.0], [NAN, 5.0, 1.0],
                      [1.0, NAN, NAN]]).reshape(5, 3, 1, 1)
    assert hard_labels(x).flatten().tolist() == [1, 0, 2, 0, 1]
    assert torch.equal(hard_labels(x), x.argmax(dim=1))


def test_hard_labels_other_dim_and_probabilities() -> None:
    p = torch.softmax(torch.randn(3, 6, 2, 7), dim=2)
    assert torch.equal(hard_labels(p, dim=2), p.argmax(dim=2))


def _reference(probs: torch.Tensor, mask: torch.Tensor, classes: str) -> torch.Tensor:
    """The former form: hard Dice via argmax for every row, then a ``where`` on empty rows."""
    def per(p: torch.Tensor, fn: object) -> torch.Tensor:
        ks = [1] if classes == "foreground" else range(p.shape[1])
        return torch.stack([fn(p, mask, cls=k) for k in ks]).mean(0)  # type: ignore[operator]

    def hard(p: torch.Tensor, m: torch.Tensor, cls: int) -> torch.Tensor:
        one = F.one_hot(p.argmax(dim=1), p.shape[1]).movedim(-1, 1).to(p.dtype)
        return soft_dice_loss_per_sample(one, m, cls=cls)

    soft = torch.stack([per(p, soft_dice_loss_per_sample) for p in probs], dim=1)
    alt = torch.stack([per(p, hard) for p in probs], dim=1)
    empty = (mask == 1).flatten(1).sum(1) == 0
    return torch.where(empty[:, None], alt, soft)


@pytest.mark.parametrize("classes", ["all", "foreground"])
@pytest.mark.parametrize("empty_rows", [(), (0,), (1, 3), (0, 1, 2, 3)])
def test_empty_fallback_only_where_needed(classes: str, empty_rows: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(7)
    probs = torch.softmax(torch.randn(3, 4, 2, 12, 12, generator=gen) * 3, dim=2)
    mask = (torch.rand(4, 12, 12, generator=gen) > 0.7).long()
    mask[list(empty_rows)] = 0
    got = dice_losses(probs, mask, classes, empty="hard_dice")  # type: ignore[arg-type]
    want = _reference(probs, mask, classes)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if empty_rows:  # the fallback changed those rows (not a no-op)
        soft = dice_losses(probs, mask, classes, empty="soft")  # type: ignore[arg-type]
        assert not torch.allclose(soft[list(empty_rows)], got[list(empty_rows)])


def test_empty_fallback_hand_computed() -> None:
    """One 2x2 empty slice: teacher A predicts nothing (loss 0), teacher B one foreground pixel
    (background Dice 1 - (2*3+1)/(3+4+1) = 1/8, foreground 1 - 1/(1+1) = 1/2; mean 5/16)."""
    a = torch.tensor([[[0.9, 0.8], [0.7, 0.6]], [[0.1, 0.2], [0.3, 0.4]]])
    b = a.clone()
    b[:, 0, 0] = torch.tensor([0.2, 0.8])
    probs = torch.stack([a, b])[:, None]  # (J=2, B=1, K=2, 2, 2)
    got = dice_losses(probs, torch.zeros(1, 2, 2, dtype=torch.long), empty="hard_dice")
    torch.testing.assert_close(got, torch.tensor([[0.0, 5 / 16]]))


def test_one_hot_labels_is_the_one_hot_argmax() -> None:
    x = torch.tensor([[[[0.3, 0.5]], [[0.7, 0.5]]]])  # (1, 2, 1, 2): class 1, then a tie -> 0
    want = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]]]])
    assert torch.equal(one_hot_labels(x), want)
