"""The one output contract every segmentation model in fedmtkd honours."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class SegOutput(NamedTuple):
    """Output of :meth:`SegModel.seg_forward`.

    Attributes:
        logits: ``(B, K, H, W)`` raw class scores at input resolution.
        features: tapped feature maps, ``features[0]`` the early map (about 1/2 input
            resolution, ``(B, C0, H/2, W/2)``) and ``features[-1]`` the deep, end-of-encoder
            map (``(B, C1, H/s, W/s)`` with s in 8..32). Distillation taps these two by
            default (``[kd] feature_taps = "emkd"``).
        decoder: the decoder's last feature map, the input of the classifier
            (``(B, Cd, H/r, W/r)``), or None for a model that does not expose it; tapped with
            ``features[-1]`` when ``[kd] feature_taps = "decoder"`` (the paper's text: "the
            final feature layer of each teacher's encoder and decoder sections").
    """

    logits: Tensor
    features: tuple[Tensor, ...]
    decoder: Tensor | None = None


class SegModel(nn.Module):
    """Base class: subclasses implement :meth:`seg_forward`; ``forward`` returns logits only.

    Keeping ``forward`` logits-only makes TorchScript/ONNX export and plain inference simple,
    while distillation calls ``seg_forward`` explicitly (no forward hooks anywhere).
    """

    def seg_forward(self, x: Tensor) -> SegOutput:
        """``x``: ``(B, C_in, H, W)`` -> :class:`SegOutput`."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C_in, H, W)`` -> logits ``(B, K, H, W)``."""
        return self.seg_forward(x).logits


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def param_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless model)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))
