"""Model complexity (parameters and FLOPs), reproducing the layout of the paper's Table 2.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode`, which counts **2
FLOPs per multiply-accumulate** for convolutions and matmuls and ignores cheap ops (BN,
activations, pooling, additions, interpolation). ``ptflops`` (used by many papers) reports
MACs, so the paper's "Flops" column may be MACs, i.e. half of :func:`count_flops`. Counting is
done on the ``meta`` device by :func:`model_table`, so even the 89M FPN costs no real compute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from common.models import MODELS, build_model
from common.models.base import count_params, param_device
from common.models.roles import STUDENTS, TEACHERS, Role, role_of

__all__ = [
    "PAPER_BUILD_KWARGS",
    "STUDENTS",
    "TEACHERS",
    "ModelStats",
    "count_flops",
    "format_table",
    "model_table",
]

#: Build options making counts comparable to the paper: stock smp PSPNet keeps its (unused)
#: encoder layer3/layer4, 24.3M parameters; FLOPs are identical either way.
PAPER_BUILD_KWARGS: Mapping[str, Mapping[str, object]] = {"pspnet_r50": {"prune_unused": False}}


@dataclass(frozen=True)
class ModelStats:
    """One row of the complexity table."""

    name: str
    role: Role
    params: int
    gflops: float


def count_flops(model: nn.Module, input_shape: Sequence[int] = (1, 1, 384, 384)) -> int:
    """FLOPs (2 per MAC) of one eval-mode forward of ``model`` on a zero input of
    ``input_shape`` ``(B, C, H, W)``, created on the model's device (``meta`` works)."""
    x = torch.zeros(tuple(input_shape), device=param_device(model))
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_stats(name: str, size: int = 384, in_channels: int = 1, num_classes: int = 2,
                **kwargs: object) -> ModelStats:  # fmt: skip
    """Parameters and GFLOPs (at ``size x size``) of registered model ``name``, built on the
    ``meta`` device (no weights allocated, nothing computed)."""
    with torch.device("meta"):
        model = build_model(name, in_channels=in_channels, num_classes=num_classes, **kwargs)
    model = model.to("meta")  # smp re-creates the stem conv weight on CPU, ignoring the context
    flops = count_flops(model, (1, in_channels, size, size))
    return ModelStats(name, role_of(name), count_params(model), flops / 1e9)


def model_table(names: list[str] | None = None, size: int = 384, in_channels: int = 1,
                num_classes: int = 2,
                build_kwargs: Mapping[str, Mapping[str, object]] | None = None,
                ) -> list[ModelStats]:  # fmt: skip
    """Rows for ``names`` (default: :data:`STUDENTS` + :data:`TEACHERS`) sorted by parameter
    count ascending, as in the paper's Table 2. ``build_kwargs`` maps a name to extra factory
    kwargs (default :data:`PAPER_BUILD_KWARGS`)."""
    chosen = list(names) if names is not None else [*STUDENTS, *TEACHERS]
    extra = PAPER_BUILD_KWARGS if build_kwargs is None else build_kwargs
    unknown = [n for n in chosen if n not in MODELS]
    if unknown:
        MODELS.get(unknown[0])  # raises, listing the valid names
    rows = [model_stats(n, size, in_channels, num_classes, **dict(extra.get(n, {})))
            for n in chosen]  # fmt: skip
    return sorted(rows, key=lambda r: r.params)


def format_table(rows: Sequence[ModelStats]) -> str:
    """Markdown table: ``| Model | Role | Params(M) | GFLOPs |`` with aligned columns."""
    header = ("Model", "Role", "Params(M)", "GFLOPs")
    body = [(r.name, r.role, f"{r.params / 1e6:.3f}", f"{r.gflops:.2f}") for r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(4)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                  enumerate(zip(cells, widths, strict=True))]  # fmt: skip
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":"
                         for i, w in enumerate(widths)) + "|"  # fmt: skip
    return "\n".join([line(header), sep, *(line(b) for b in body)])
