"""One optimiser spec for every trainer: the stateless rate of a FedAvg round
(:meth:`OptimSpec.lr_at`) is torch's CyclicLR step for step."""

from __future__ import annotations

import pytest
import torch

from common.training import OptimSpec, make_optimiser


@pytest.mark.parametrize("base,top,half", [(1e-5, 0.003, 100), (0.0, 1.0, 3), (0.01, 0.02, 1)])
def test_lr_at_is_torchs_cyclic_lr(base: float, top: float, half: int) -> None:
    spec = OptimSpec(max_lr=top, base_lr=base, step_size_up=half)
    opt, sched = make_optimiser(torch.nn.Linear(2, 1), spec)
    for step in range(5 * half + 3):
        assert opt.param_groups[0]["lr"] == pytest.approx(spec.lr_at(step), rel=1e-12, abs=0)
        opt.step()
        sched.step()


def test_lr_at_by_hand() -> None:
    """base 0, top 1, 4 steps up: 0, .25, .5, .75, 1, .75, ..., 0 at step 8, then again."""
    spec = OptimSpec(max_lr=1.0, base_lr=0.0, step_size_up=4)
    assert [spec.lr_at(s) for s in (0, 1, 2, 4, 6, 8, 9)] == [0.0, 0.25, 0.5, 1.0, 0.5, 0.0,
                                                              0.25]
