"""bench/kd_diagnostics.py: the KD objective term by term, and how hard each term pulls.

Random-initialised real students/teachers (ENet student, ESPNet teacher), blob slices, CPU.
"""

from __future__ import annotations

import pytest
import torch

from bench.kd_diagnostics import disc_batch, term_gradient_norms, weighted_terms
from common.kd.losses import KDLoss
from common.kd.targets import TeacherTargets, compute_teacher_targets
from common.models import build_model
from common.models.base import SegModel

KW = {"in_channels": 1, "num_classes": 2}


def _models(seed: int = 0) -> tuple[SegModel, SegModel]:
    torch.manual_seed(seed)
    return build_model("enet", **KW), build_model("espnet", **KW)


@pytest.mark.parametrize("size", [32, 64])
def test_at_gradient_within_an_order_of_magnitude_of_kl(size: int) -> None:
    """Default alpha = beta = 0.1: each summed AT term pulls the student with a gradient norm
    in [KL/10, 10 KL] at both resolutions; the former mean over positions is >100x weaker
    (the issue's measurement at 384 px: AT early 7.9e-7 vs KL 0.25)."""
    student, teacher = _models()
    x, y = disc_batch(2, size)
    tt = compute_teacher_targets(teacher, x, y)
    student.train()
    out = student.seg_forward(x)
    feats = (out.features[0], out.features[-1])
    norms = {red: term_gradient_norms(student, weighted_terms(KDLoss(at_reduce=red), out.logits,
                                                               feats, y, tt))
             for red in ("sum", "mean")}
    kl = norms["sum"]["kl"]
    assert kl > 0 and norms["mean"]["kl"] == pytest.approx(kl)
    for term in ("at_early", "at_deep"):
        assert kl / 10 <= norms["sum"][term] <= 10 * kl, (term, norms["sum"])
    assert norms["mean"]["at_early"] < kl / 100, norms["mean"]


def test_weighted_terms_add_up_to_total() -> None:
    student, teacher = _models()
    x, y = disc_batch(2, 32)
    tt = TeacherTargets.stack([compute_teacher_targets(teacher, x, y)] * 2)
    w = torch.tensor([[0.3, 0.7], [0.5, 0.5]])
    out = student.seg_forward(x)
    loss = KDLoss(alpha=0.2, beta=0.3)
    terms = weighted_terms(loss, out.logits, (out.features[0], out.features[-1]), y, tt, w)
    total = loss(out, y, tt, w)["total"]
    assert sum(v.item() for v in terms.values()) == pytest.approx(total.item(), rel=1e-5)
