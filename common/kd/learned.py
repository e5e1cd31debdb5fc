"""A learned, instance-level teacher weighting (AMTML-KD style), trained with the student.

AMTML-KD (Liu, Zhang & Wang 2020, "Adaptive multi-teacher multi-level knowledge
distillation", Neurocomputing) learns one importance weight per teacher *per instance*, jointly
with the student. Here that is :class:`LearnedWeighting`: for every proxy slice ``b`` and
teacher ``j`` a small label-free descriptor ``d_bj`` of the teacher's prediction (pooled over
the slice) is scored by a head shared by all teachers plus a learnable per-teacher bias (the
teacher's latent importance), and the weights are ``softmax_j(score_bj)``. The head's
parameters are handed to the student's optimiser (the same Adam + CyclicLR), so the weights
move to whatever lowers the student's KD loss, and are saved in the student's ``last.pt``.

Deviation from AMTML-KD: there the instance representation comes from the student's own
features; here it comes from the teachers' outputs (what a site sends), computed once on the
un-augmented proxy slices (as every other weighting in :mod:`common.kd.fusion`), so the weights
stay a property of the input slice and padding brought in by augmentation does not change them.

Every weight starts equal: the last layer and the per-teacher bias start at zero, so the first
step is exactly the ``"equal"`` weighting (``softmax`` of equal scores is ``1/J``).
Deterministic: a hidden layer (``hidden > 0``) is initialised from its own generator with a
fixed seed, never from the global random stream (which the student's dropout uses).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from common.kd.fusion import register_weighting

DESCRIPTOR_SIZE = 3
"""Features per teacher and slice: mean max-probability, mean normalised entropy, mean
foreground probability (all in [0, 1], the same for any number of classes)."""
_INIT_SEED = 0


def describe(teacher_probs: Tensor) -> Tensor:
    """Label-free descriptor of each teacher's prediction per slice.

    ``teacher_probs (J,B,K,H,W)`` (temperature 1) -> ``(B,J,3)``: the pixel means of the max
    class probability, of the entropy divided by ``log K`` and of ``1 - p_background``.
    """
    k = teacher_probs.shape[2]
    conf = teacher_probs.amax(dim=2)  # (J,B,H,W)
    ent = -torch.xlogy(teacher_probs, teacher_probs).sum(dim=2) / math.log(max(k, 2))
    fg = 1.0 - teacher_probs[:, :, 0]
    feats = torch.stack([conf, ent, fg], dim=-1)  # (J,B,H,W,3)
    return feats.flatten(2, 3).mean(dim=2).transpose(0, 1).float()


class WeightHead(nn.Module):
    """The learnable part: ``forward(descriptors (B,J,3)) -> weights (B,J)``, rows summing to 1.

    ``hidden = 0``: a linear head ``3 -> 1`` (no bias: a bias shared by all teachers cancels in
    the softmax); ``hidden > 0``: ``3 -> hidden -> tanh -> 1``; plus one bias per teacher
    (created by :meth:`bind`). The last layer and the biases start at zero (equal weights).
    """

    def __init__(self, hidden: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from it
            self._build(hidden)
        self.teacher_bias = nn.Parameter(torch.zeros(0))

    def _build(self, hidden: int) -> None:
        """``self.head``, initialised without the global random stream (see module doc)."""
        layers: list[nn.Module] = []
        width = DESCRIPTOR_SIZE
        if hidden:
            first = nn.Linear(DESCRIPTOR_SIZE, hidden)
            gen = torch.Generator().manual_seed(_INIT_SEED)
            bound = 1.0 / math.sqrt(DESCRIPTOR_SIZE)
            with torch.no_grad():
                first.weight.copy_(torch.rand(first.weight.shape, generator=gen) * 2 * bound
                                   - bound)
                first.bias.zero_()
            layers += [first, nn.Tanh()]
            width = hidden
        last = nn.Linear(width, 1, bias=False)
        nn.init.zeros_(last.weight)
        self.head = nn.Sequential(*layers, last)

    def bind(self, num_teachers: int) -> WeightHead:
        """Create the ``num_teachers`` per-teacher biases (zeros); returns ``self``."""
        if num_teachers < 1:
            raise ValueError(f"need at least one teacher, got {num_teachers}")
        dev = self.teacher_bias.device
        self.teacher_bias = nn.Parameter(torch.zeros(num_teachers, device=dev))
        return self

    def forward(self, descriptors: Tensor) -> Tensor:
        j = descriptors.shape[1]
        if self.teacher_bias.numel() != j:
            raise ValueError(f"learned weighting bound to {self.teacher_bias.numel()} teachers, "
                             f"got {j}; call bind({j}) before building the optimiser")
        scores = self.head(descriptors).squeeze(-1) + self.teacher_bias
        return torch.softmax(scores, dim=1)


@register_weighting("learned")
class LearnedWeighting:
    """AMTML-KD-style weighting: ``softmax_j(head(d_bj) + bias_j)``, ``d`` = :func:`describe`.

    ``module`` (a :class:`WeightHead`) holds the parameters: the student trainer binds it to
    the number of teachers, hands its parameters to the student's optimiser and saves its
    state in ``last.pt``, and calls :meth:`from_descriptors` per batch. ``__call__`` is the
    weighting protocol of :mod:`common.kd.fusion` (``(J,B,K,H,W)``, mask unused -> ``(B,J)``;
    it binds the head on first use).
    """

    trainable = True

    def __init__(self, hidden: int = 0) -> None:
        if not isinstance(hidden, int) or isinstance(hidden, bool) or not 0 <= hidden <= 256:
            raise ValueError(f"hidden must be an integer in [0, 256], got {hidden!r}")
        self.module = WeightHead(hidden)

    def bind(self, num_teachers: int) -> WeightHead:
        """Bind the head to ``num_teachers`` teachers (before building the optimiser)."""
        return self.module.bind(num_teachers)

    def from_descriptors(self, descriptors: Tensor) -> Tensor:
        """``(B,J,3)`` -> weights ``(B,J)`` (differentiable in the head's parameters)."""
        return self.module(descriptors)

    def __call__(self, teacher_probs: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.module.teacher_bias.numel() == 0:
            self.bind(teacher_probs.shape[0])
        return self.from_descriptors(describe(teacher_probs).to(self.module.teacher_bias.device))


def is_trainable(weighting: object) -> bool:
    """True for a weighting with learnable parameters (``trainable = True``)."""
    return bool(getattr(weighting, "trainable", False))
