"""ENet student (Paszke et al., 2016, "ENet: A Deep Neural Network Architecture for Real-Time
Semantic Segmentation"), written from the paper.

Layout (channels / resolution for an ``(B, 1, 384, 384)`` input):

* initial block: 3x3 stride-2 conv (``16 - C_in`` maps) concatenated with a 2x2 max-pool of the
  input, BN, PReLU -> ``(B, 16, 192, 192)``  **tapped as ``features[0]``**;
* stage 1: downsampling bottleneck 16->64 + 4 regular bottlenecks -> ``(B, 64, 96, 96)``;
* stage 2: downsampling bottleneck 64->128 + 8 bottlenecks (regular, dilated 2, asymmetric 5,
  dilated 4, regular, dilated 8, asymmetric 5, dilated 16) -> ``(B, 128, 48, 48)``;
* stage 3: stage 2 without downsampling -> ``(B, 128, 48, 48)``  **tapped as ``features[-1]``**
  (end of encoder, 1/8 resolution);
* stage 4: upsampling bottleneck 128->64 (max-unpooling with the stage-2 indices) + 2 regular;
* stage 5: upsampling bottleneck 64->16 (stage-1 indices) + 1 regular;
* full conv: 3x3 stride-2 transposed conv 16->K -> logits ``(B, K, 384, 384)``.

Every bottleneck is a 1x1 projection to ``C/4``, a main conv, a 1x1 expansion, spatial dropout
and a residual add followed by PReLU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.models.base import SegModel, SegOutput
from common.models.zoo import register_model


def _cbp(conv: nn.Module, channels: int) -> nn.Sequential:
    """``conv`` followed by BatchNorm and PReLU (shape preserved by BN/PReLU)."""
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.PReLU(channels))


class InitialBlock(nn.Module):
    """``(B, C_in, H, W)`` -> ``(B, out, H/2, W/2)``: strided conv || max-pool, BN, PReLU."""

    def __init__(self, in_channels: int, out_channels: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, 2, 1, bias=False)
        self.pool = nn.MaxPool2d(2, 2)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


def _main_conv(ch: int, kind: str, arg: int) -> nn.Module:
    """Main conv of a regular bottleneck: ``regular``, ``dilated`` (rate ``arg``) or
    ``asymmetric`` (``arg x 1`` then ``1 x arg``). Shape preserving."""
    if kind == "asymmetric":
        pad = arg // 2
        return nn.Sequential(
            nn.Conv2d(ch, ch, (arg, 1), padding=(pad, 0), bias=False),
            nn.Conv2d(ch, ch, (1, arg), padding=(0, pad), bias=False),
        )
    dil = arg if kind == "dilated" else 1
    return nn.Conv2d(ch, ch, 3, padding=dil, dilation=dil, bias=False)


class RegularBottleneck(nn.Module):
    """Residual bottleneck, ``(B, C, H, W)`` -> ``(B, C, H, W)``."""

    def __init__(self, ch: int, kind: str = "regular", arg: int = 1, drop: float = 0.1) -> None:
        super().__init__()
        mid = ch // 4
        self.branch = nn.Sequential(
            _cbp(nn.Conv2d(ch, mid, 1, bias=False), mid),
            _cbp(_main_conv(mid, kind, arg), mid),
            _cbp(nn.Conv2d(mid, ch, 1, bias=False), ch),
            nn.Dropout2d(drop),
        )
        self.act = nn.PReLU(ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.branch(x))


class DownBottleneck(nn.Module):
    """``(B, C_in, H, W)`` -> ``((B, C_out, H/2, W/2), pool indices)``."""

    def __init__(self, cin: int, cout: int, drop: float) -> None:
        super().__init__()
        mid = cin // 4
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.pad = cout - cin
        self.branch = nn.Sequential(
            _cbp(nn.Conv2d(cin, mid, 2, stride=2, bias=False), mid),
            _cbp(nn.Conv2d(mid, mid, 3, padding=1, bias=False), mid),
            _cbp(nn.Conv2d(mid, cout, 1, bias=False), cout),
            nn.Dropout2d(drop),
        )
        self.act = nn.PReLU(cout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        main, idx = self.pool(x)
        b, _, h, w = main.shape
        main = torch.cat([main, main.new_zeros(b, self.pad, h, w)], dim=1)
        return self.act(main + self.branch(x)), idx


class UpBottleneck(nn.Module):
    """``(B, C_in, H, W)`` + pool indices -> ``(B, C_out, 2H, 2W)`` via max-unpooling."""

    def __init__(self, cin: int, cout: int, drop: float) -> None:
        super().__init__()
        mid = cin // 4
        self.main = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.unpool = nn.MaxUnpool2d(2, 2)
        up = nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.branch = nn.Sequential(
            _cbp(nn.Conv2d(cin, mid, 1, bias=False), mid),
            _cbp(up, mid),
            _cbp(nn.Conv2d(mid, cout, 1, bias=False), cout),
            nn.Dropout2d(drop),
        )
        self.act = nn.PReLU(cout)

    def forward(self, x: Tensor, idx: Tensor, size: torch.Size) -> Tensor:
        main = self.unpool(self.main(x), idx, output_size=size)
        return self.act(main + self.branch(x))


_STAGE23 = [
    ("regular", 1), ("dilated", 2), ("asymmetric", 5), ("dilated", 4),
    ("regular", 1), ("dilated", 8), ("asymmetric", 5), ("dilated", 16),
]  # fmt: skip


def _stage23() -> nn.Sequential:
    return nn.Sequential(*(RegularBottleneck(128, k, a, 0.1) for k, a in _STAGE23))


@register_model("enet")
class ENet(SegModel):
    """ENet. ``seg_forward``: ``(B, C_in, H, W)`` (H, W divisible by 8) -> logits
    ``(B, K, H, W)``, features ``((B, 16, H/2, W/2), (B, 128, H/8, W/8))`` (initial block,
    end of stage 3). ~0.35M parameters for ``in_channels=1, num_classes=2``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        self.initial = InitialBlock(in_channels, 16)
        self.down1 = DownBottleneck(16, 64, 0.01)
        self.stage1 = nn.Sequential(*(RegularBottleneck(64, drop=0.01) for _ in range(4)))
        self.down2 = DownBottleneck(64, 128, 0.1)
        self.stage2 = _stage23()
        self.stage3 = _stage23()
        self.up4 = UpBottleneck(128, 64, 0.1)
        self.stage4 = nn.Sequential(RegularBottleneck(64), RegularBottleneck(64))
        self.up5 = UpBottleneck(64, 16, 0.1)
        self.stage5 = RegularBottleneck(16)
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 3, 2, 1, output_padding=1, bias=False)

    def seg_forward(self, x: Tensor) -> SegOutput:
        """``x``: ``(B, C_in, H, W)`` -> :class:`SegOutput` (see class docstring)."""
        early = self.initial(x)
        s1, idx1 = self.down1(early)
        s1 = self.stage1(s1)
        s2, idx2 = self.down2(s1)
        deep = self.stage3(self.stage2(s2))
        d4 = self.stage4(self.up4(deep, idx2, s1.shape))
        d5 = self.stage5(self.up5(d4, idx1, early.shape))
        return SegOutput(self.fullconv(d5), (early, deep), d5)
