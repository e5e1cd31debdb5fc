"""Term-by-term diagnostics of the KD objective: how hard each weighted term pulls the student.

Used by ``bench/bench_kd_terms.py`` (numbers in docs/BENCHMARKS.md) and
tests/bench/test_kd_diagnostics.py; :func:`disc_batch` also feeds tests/common/test_kd_terms.py.
Not on the training path (bench code: the product never imports it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.kd.losses import KDLoss
from common.kd.targets import TeacherTargets

__all__ = ["TERMS", "term_gradient_norms", "weighted_terms"]

TERMS = ("seg", "kl", "at_early", "at_deep", "rc_early", "rc_deep")


def weighted_terms(loss: KDLoss, logits: Tensor, feats: tuple[Tensor, Tensor], mask: Tensor,
                   teacher: TeacherTargets, weights: Tensor | None = None,
                   valid: Tensor | None = None) -> dict[str, Tensor]:
    """Each term of ``total`` as it enters it (``alpha``/``beta`` applied), scalars.

    ``logits (B,K,H,W)``, ``feats`` the student's two tapped maps, ``mask (B,H,W)``,
    ``weights (B,J)`` (None for one teacher), ``valid (B,H,W)`` or None. The six terms sum to
    ``loss(...)["total"]`` for ``loss.reduction == "mean"``.
    """
    w = loss._check_weights(teacher, weights, logits)
    a, b = loss.alpha, loss.beta
    out = {"seg": loss.seg(logits, mask),
           "kl": b * loss.kl(logits, teacher.fused_probs(w, loss.temperature), valid).mean()}
    pairs = {"early": (feats[0], teacher.at_early, teacher.rc_early),
             "deep": (feats[1], teacher.at_deep, teacher.rc_deep)}
    for name, (f, at_t, rc_t) in pairs.items():
        at = torch.stack([loss.mid.at(f, at_t[j], valid) for j in range(w.shape[1])], 1)
        rc = torch.stack([loss.mid.rc(f, mask, rc_t[j], valid) for j in range(w.shape[1])], 1)
        out[f"at_{name}"] = a * (at * w).sum(dim=1).mean()
        out[f"rc_{name}"] = a * (rc * w).sum(dim=1).mean()
    return out


def term_gradient_norms(model: nn.Module, terms: dict[str, Tensor]) -> dict[str, float]:
    """L2 norm, over all of ``model``'s parameters, of the gradient of each term in ``terms``."""
    params = [p for p in model.parameters() if p.requires_grad]
    norms = {}
    for name, value in terms.items():
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        sq = sum(float(g.double().pow(2).sum()) for g in grads if g is not None)
        norms[name] = sq**0.5
    return norms


def disc_batch(b: int, s: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``b`` noisy slices ``(b,1,s,s)`` with an off-centre disc label ``(b,s,s)``: a tiny,
    seeded segmentation task for measuring the loss terms (bench and tests)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    disc = ((yy - s / 2) ** 2 + (xx - s / 2.4) ** 2 < (s / 5) ** 2).long()
    masks = disc.expand(b, s, s).clone()
    images = masks[:, None].float() * 1.5 + 0.5 * torch.randn(b, 1, s, s, generator=g)
    return images, masks
