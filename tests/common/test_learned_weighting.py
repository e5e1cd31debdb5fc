"""The AMTML-KD-style learned teacher weighting: per-sample weights from a small head trained
by the student's optimiser (common/kd/learned.py), and the trainer plumbing it needs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from common.kd.fusion import EqualWeighting, build_weighting
from common.kd.learned import LearnedWeighting, describe, is_trainable
from common.training import OptimSpec, Trainer


def _linear(w: LearnedWeighting, k: int) -> torch.nn.Linear:
    """Layer ``k`` of the head (a Linear)."""
    layer = w.module.head[k]
    assert isinstance(layer, torch.nn.Linear)
    return layer


def _probs() -> torch.Tensor:
    """Two teachers, two slices, K = 2, 1x2 pixels: ``(J=2, B=2, K=2, 1, 2)``; teacher 0 is
    sure of background on slice 0 and split 50/50 on slice 1, teacher 1 the reverse."""
    p_fg = torch.tensor([[[0.0, 0.0], [0.5, 0.5]],      # teacher 0: slice 0, slice 1
                         [[0.5, 0.5], [1.0, 0.0]]])     # teacher 1
    return torch.stack([1 - p_fg, p_fg], dim=2).unsqueeze(3)


def test_descriptor_by_hand() -> None:
    d = describe(_probs())  # (B=2, J=2, 3): mean max-prob, mean entropy / log 2, mean p_fg
    assert d.shape == (2, 2, 3)
    assert torch.allclose(d[0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(d[0, 1], torch.tensor([0.5, 1.0, 0.5]))
    assert torch.allclose(d[1, 0], torch.tensor([0.5, 1.0, 0.5]))
    assert torch.allclose(d[1, 1], torch.tensor([1.0, 0.0, 0.5]))  # one pixel fg, one bg


@pytest.mark.parametrize("hidden", [0, 4])
def test_starts_exactly_equal_and_rows_sum_to_one(hidden: int) -> None:
    w = build_weighting("learned", hidden=hidden)
    assert isinstance(w, LearnedWeighting) and len(w.module.head) == (3 if hidden else 1)
    assert is_trainable(w) and not is_trainable(EqualWeighting())
    out = w(_probs(), None)
    assert torch.equal(out, EqualWeighting()(_probs()))  # exactly 1/J: the first step = equal
    torch.nn.init.normal_(w.module.teacher_bias)  # any parameters: still a distribution
    torch.nn.init.normal_(_linear(w, -1).weight)
    moved = w(_probs(), None)
    assert torch.allclose(moved.sum(dim=1), torch.ones(2)) and (moved > 0).all()
    assert not torch.equal(moved, out)


def test_gradients_reach_every_parameter() -> None:
    """Loss = weight of teacher 1 on slice 0: d/d bias = w0*w1 * (-1, +1) = (-1/4, 1/4) at
    init; d/d head weight = sum_j dL/ds_j * d_j = 1/4 * (d_01 - d_00) = 1/4 * (-0.5, 1, 0.5)."""
    w = LearnedWeighting()
    w.bind(2)
    loss = w.from_descriptors(describe(_probs()))[0, 1]
    loss.backward()
    bias_grad, head_grad = w.module.teacher_bias.grad, _linear(w, -1).weight.grad
    assert bias_grad is not None and head_grad is not None
    assert torch.allclose(bias_grad, torch.tensor([-0.25, 0.25]))
    assert torch.allclose(head_grad, torch.tensor([[-0.125, 0.25, 0.125]]))


def test_unbound_or_wrongly_bound_head_is_refused() -> None:
    w = LearnedWeighting()
    with pytest.raises(ValueError, match=r"call bind\(2\)"):
        w.from_descriptors(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="hidden must be an integer"):
        LearnedWeighting(hidden=-1)


def test_building_it_draws_nothing_from_the_global_random_stream() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = _linear(LearnedWeighting(hidden=8), 0).weight.detach().clone()
    assert torch.equal(torch.rand(3), expected)  # the student's dropout stream is untouched
    assert torch.equal(_linear(LearnedWeighting(hidden=8), 0).weight, first)  # deterministic


def test_trainer_trains_and_resumes_the_extra_parameters(tmp_path: Path) -> None:
    """The head's parameters join the student's Adam, move with it and come back on resume."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    w = LearnedWeighting()
    w.bind(2)
    spec = OptimSpec(max_lr=0.1, base_lr=0.1, step_size_up=10)
    tr = Trainer(model, ("x", {}), spec, torch.device("cpu"), tmp_path, amp=False,
                 extra={"weighting": w.module}, params=list(w.module.parameters()))
    assert len(tr.opt.param_groups[0]["params"]) == 2 + 2  # model weight, bias; head, biases
    loss = w.from_descriptors(describe(_probs()))[:, 1].sum() + model(torch.ones(1, 2)).sum()
    tr.step(loss)
    bias = w.module.teacher_bias.detach().clone()
    assert bias[0] == pytest.approx(0.1) and bias[1] == pytest.approx(-0.1)  # Adam: lr*sign
    tr.save_last(0)
    w2 = LearnedWeighting()
    w2.bind(2)
    tr2 = Trainer(torch.nn.Linear(2, 1), ("x", {}), spec, torch.device("cpu"), tmp_path,
                  amp=False, extra={"weighting": w2.module}, params=list(w2.module.parameters()))
    assert tr2.resume() == 1
    assert torch.equal(w2.module.teacher_bias, bias)
    state = tr2.opt.state_dict()["state"]
    assert len(state) == 4 and math.isclose(float(state[2]["step"]), 1.0)
