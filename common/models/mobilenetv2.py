"""MobileNetV2 student (Sandler et al., 2018) with output stride 8 and a light segmentation
head, as in the EMKD reference networks; written from the paper.

Encoder: 3x3 stride-2 stem (32 maps) and the inverted-residual stages ``(t, c, n, s)`` =
(1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1), then a 1x1
conv to 1280 maps. For output stride 8 the strides of the 64- and 160-map stages become 1 and
their depthwise convs are dilated (rate 2 from the 64 stage on, rate 4 from the 160 stage on).
Head: 1x1 conv 1280->K, bilinear upsampling x8.

Tapped (``(B, 1, 384, 384)`` input): ``features[0]`` = output of the first inverted-residual
block ``(B, 16, 192, 192)``; ``features[-1]`` = the 1280-map end of encoder ``(B, 1280, 48,
48)`` (1/8 resolution).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from common.models.base import SegModel, SegOutput
from common.models.zoo import register_model

# (expansion t, channels c, repeats n, stride s, dilation) with output stride 8
_SETTINGS = (
    (1, 16, 1, 1, 1),
    (6, 24, 2, 2, 1),
    (6, 32, 3, 2, 1),
    (6, 64, 4, 1, 2),
    (6, 96, 3, 1, 2),
    (6, 160, 3, 1, 4),
    (6, 320, 1, 1, 4),
)


def _cbr6(
    cin: int, cout: int, k: int, stride: int = 1, dil: int = 1, groups: int = 1
) -> nn.Sequential:
    """Conv + BN + ReLU6: ``(B, cin, H, W)`` -> ``(B, cout, H/stride, W/stride)``."""
    pad = dil * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, pad, dilation=dil, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1); residual when shapes match.

    ``(B, cin, H, W)`` -> ``(B, cout, H/stride, W/stride)``.
    """

    def __init__(self, cin: int, cout: int, stride: int, t: int, dil: int = 1) -> None:
        super().__init__()
        hid = cin * t
        layers: list[nn.Module] = [] if t == 1 else [_cbr6(cin, hid, 1)]
        layers += [
            _cbr6(hid, hid, 3, stride, dil, groups=hid),
            nn.Conv2d(hid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def _stages(cin: int) -> nn.ModuleList:
    """Inverted-residual stages from :data:`_SETTINGS`, starting from ``cin`` maps."""
    stages = nn.ModuleList()
    for t, c, n, s, d in _SETTINGS:
        blocks = [InvertedResidual(cin if i == 0 else c, c, s if i == 0 else 1, t, d)
                  for i in range(n)]  # fmt: skip
        stages.append(nn.Sequential(*blocks))
        cin = c
    return stages


@register_model("mobilenetv2")
class MobileNetV2Seg(SegModel):
    """MobileNetV2 (OS 8) + 1x1 head. ``seg_forward``: ``(B, C_in, H, W)`` (H, W divisible by
    8) -> logits ``(B, K, H, W)``, features ``((B, 16, H/2, W/2), (B, 1280, H/8, W/8))``.
    ~2.23M parameters for ``in_channels=1, num_classes=2``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        self.stem = _cbr6(in_channels, 32, 3, 2)
        self.stages = _stages(32)
        self.last = _cbr6(320, 1280, 1)
        self.head = nn.Conv2d(1280, num_classes, 1)

    def seg_forward(self, x: Tensor) -> SegOutput:
        """``x``: ``(B, C_in, H, W)`` -> :class:`SegOutput` (see class docstring)."""
        early = self.stages[0](self.stem(x))
        y = early
        for stage in self.stages[1:]:
            y = stage(y)
        deep = self.last(y)
        logits = F.interpolate(self.head(deep), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)  # fmt: skip
        return SegOutput(logits, (early, deep), deep)  # no decoder: the head reads ``deep``
