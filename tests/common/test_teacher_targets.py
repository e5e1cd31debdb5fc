"""The one teacher-output type: stack, concat, map, index, select, fuse, with shape checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from common.kd.targets import TeacherTargets


def _tt(j: int, b: int, value: float, side: int = 4) -> TeacherTargets:
    """``J`` teachers, ``B`` slices; teacher ``i`` holds ``value + i`` everywhere."""
    off = torch.arange(j, dtype=torch.float32).view(j, 1)
    return TeacherTargets(
        logits=(value + off).view(j, 1, 1, 1, 1).expand(j, b, 2, side, side).clone(),
        at_early=(value + off).view(j, 1, 1, 1).expand(j, b, side // 2, side // 2).clone(),
        at_deep=(value + off).view(j, 1, 1, 1).expand(j, b, 1, 1).clone(),
        rc_early=(value + off).expand(j, b).clone(),
        rc_deep=(value + off).expand(j, b).clone())


def test_stack_concat_select_index_map() -> None:
    a, b = _tt(1, 3, 0.0), _tt(2, 3, 10.0)
    st = TeacherTargets.stack([a, b])
    assert (st.num_teachers, st.batch_size) == (3, 3)
    assert st.rc_deep[:, 0].tolist() == [0.0, 10.0, 11.0]
    assert st.select([2, 0]).rc_early[:, 0].tolist() == [11.0, 0.0]
    assert st.teacher(1).rc_early.tolist() == [[10.0, 10.0, 10.0]]
    cat = TeacherTargets.concat([_tt(2, 1, 0.0), _tt(2, 2, 5.0)])
    assert (cat.num_teachers, cat.batch_size) == (2, 3)
    assert cat.rc_early[0].tolist() == [0.0, 5.0, 5.0]
    assert cat.index([2, 0]).rc_early[1].tolist() == [6.0, 1.0]
    half = cat.map(lambda v: v.half())
    assert all(v.dtype == torch.float16 for v in half.as_dict().values())
    assert list(half.as_dict()) == ["logits", "at_early", "at_deep", "rc_early", "rc_deep"]


def test_shapes_are_checked() -> None:
    other = dataclasses.replace(_tt(1, 2, 0.0), at_deep=torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match=r"cannot stack at_deep of shapes \[\(2, 1, 1\), "):
        TeacherTargets.stack([_tt(1, 2, 0.0), other])  # maps of a different size
    with pytest.raises(ValueError, match="cannot stack logits"):
        TeacherTargets.stack([_tt(1, 2, 0.0), _tt(1, 3, 0.0)])  # B differs
    with pytest.raises(ValueError, match="cannot concat logits"):
        TeacherTargets.concat([_tt(1, 2, 0.0), _tt(2, 2, 0.0)])  # J differs
    with pytest.raises(ValueError, match="empty"):
        TeacherTargets.concat([])
    t = _tt(2, 3, 0.0)
    with pytest.raises(ValueError, match="rc_deep leading dims"):
        TeacherTargets(t.logits, t.at_early, t.at_deep, t.rc_early, t.rc_deep[:, :2])


def test_fused_probs_by_hand() -> None:
    t = _tt(2, 1, 0.0, side=2)
    t.logits[0, 0, 1] = math.log(3.0)  # teacher 0: softmax(0, ln 3) = (1/4, 3/4)
    t.logits[1, 0, 1] = 1.0  # teacher 1: both logits 1 -> (1/2, 1/2)
    fused = t.fused_probs(torch.tensor([[0.25, 0.75]]))
    assert fused.shape == (1, 2, 2, 2)
    # foreground: 0.25 * 3/4 + 0.75 * 1/2 = 0.5625
    assert torch.allclose(fused[0, 1], torch.full((2, 2), 0.5625))
    assert torch.allclose(fused.sum(dim=1), torch.ones(1, 2, 2))
    # temperature 2: teacher 0 softmax(0, ln3 / 2) = (1/(1+sqrt3), sqrt3/(1+sqrt3))
    hot = t.fused_probs(torch.tensor([[1.0, 0.0]]), temperature=2.0)
    assert hot[0, 1, 0, 0].item() == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)), rel=1e-6)
