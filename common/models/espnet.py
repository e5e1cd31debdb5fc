"""ESPNet student (Mehta et al., 2018, "ESPNet: Efficient Spatial Pyramid of Dilated
Convolutions for Semantic Segmentation"), the full encoder-decoder network with ``p=2, q=3``,
written from the paper.

Layout (shapes for an ``(B, 1, 384, 384)`` input, ``K`` classes, ``Ci = in_channels``):

* level 1: 3x3 stride-2 CBR ``Ci->16``; concatenated with the 1/2 average-pooled image (input
  reinforcement), BN+PReLU -> ``(B, 16+Ci, 192, 192)``  **tapped as ``features[0]``**;
* level 2: strided ESP module -> 64 maps, ``p=2`` ESP modules, concat with the strided output
  and the 1/4 image -> ``(B, 128+Ci, 96, 96)``;
* level 3: strided ESP -> 128 maps, ``q=3`` ESP modules, concat with the strided output ->
  ``(B, 256, 48, 48)``  **tapped as ``features[-1]``** (end of encoder, 1/8 resolution);
* decoder: 1x1 classifier at 1/8, deconv to 1/4, fuse with a 1x1 projection of level 2 through
  an ESP module, deconv to 1/2, fuse with level 1 via a 3x3 CBR, deconv -> ``(B, K, 384, 384)``.

An ESP module projects to ``n = C/5`` maps (1x1, or 3x3 stride 2 when downsampling), runs five
parallel 3x3 convolutions with dilation 1, 2, 4, 8, 16, adds the dilated outputs
hierarchically (HFF) before concatenation, and adds the input when shapes allow.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.models.base import SegModel, SegOutput
from common.models.zoo import register_model


class BNPReLU(nn.Sequential):
    """BatchNorm + PReLU; shape preserving."""

    def __init__(self, ch: int) -> None:
        super().__init__(nn.BatchNorm2d(ch, eps=1e-3), nn.PReLU(ch))


class CBR(nn.Sequential):
    """Conv (no bias, 'same' padding) + BN + PReLU: ``(B, cin, H, W)`` -> ``(B, cout, H/s,
    W/s)``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1) -> None:
        conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)
        super().__init__(conv, nn.BatchNorm2d(cout, eps=1e-3), nn.PReLU(cout))


class ESPModule(nn.Module):
    """Efficient spatial pyramid with HFF.

    ``(B, cin, H, W)`` -> ``(B, cout, H/s, W/s)``, ``s = 2`` when ``down`` else 1. The
    residual add is used when ``residual`` and ``cin == cout`` (never when downsampling).
    With ``cout < 5`` each branch gets one map and a 1x1 conv projects the 5 maps to ``cout``.
    """

    def __init__(self, cin: int, cout: int, down: bool = False, residual: bool = True) -> None:
        super().__init__()
        n = max(1, cout // 5)
        n1 = max(1, cout - 4 * n)
        k, s = (3, 2) if down else (1, 1)
        self.reduce = nn.Conv2d(cin, n, k, s, padding=k // 2, bias=False)
        self.branches = nn.ModuleList(
            nn.Conv2d(n, n1 if d == 1 else n, 3, padding=d, dilation=d, bias=False)
            for d in (1, 2, 4, 8, 16)
        )
        self.residual = residual and not down and cin == cout
        # fewer than 5 output maps (e.g. the 2-class decoder): 1x1 projection of the 5 branches
        self.project: nn.Module = (
            nn.Conv2d(n1 + 4 * n, cout, 1, bias=False) if n1 + 4 * n != cout else nn.Identity()
        )
        self.out = BNPReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        r = self.reduce(x)
        outs = [b(r) for b in self.branches]
        fused = [outs[0], outs[1]]
        for o in outs[2:]:  # hierarchical feature fusion removes gridding artefacts
            fused.append(fused[-1] + o)
        y = self.project(torch.cat(fused, dim=1))
        return self.out(x + y if self.residual else y)


class ImagePyramid(nn.Module):
    """Input reinforcement: ``(B, C, H, W)`` -> ``(B, C, H/2^t, W/2^t)`` by 3x3 average pools."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.pools = nn.Sequential(*(nn.AvgPool2d(3, 2, padding=1) for _ in range(times)))

    def forward(self, x: Tensor) -> Tensor:
        return self.pools(x)


def _deconv(ch: int) -> nn.ConvTranspose2d:
    """2x learned upsampling, ``(B, ch, H, W)`` -> ``(B, ch, 2H, 2W)``."""
    return nn.ConvTranspose2d(ch, ch, 2, stride=2, bias=False)


@register_model("espnet")
class ESPNet(SegModel):
    """Full ESPNet (p=2, q=3). ``seg_forward``: ``(B, C_in, H, W)`` (H, W divisible by 8) ->
    logits ``(B, K, H, W)``, features ``((B, 16+C_in, H/2, W/2), (B, 256, H/8, W/8))``
    (level-1 concat, level-3 concat). ~0.18M parameters for ``in_channels=1, num_classes=2``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, p: int = 2, q: int = 3):
        super().__init__()
        ci, k = in_channels, num_classes
        self.level1 = CBR(ci, 16, 3, 2)
        self.img2, self.img4 = ImagePyramid(1), ImagePyramid(2)
        self.b1 = BNPReLU(16 + ci)
        self.down2 = ESPModule(16 + ci, 64, down=True)
        self.level2 = nn.Sequential(*(ESPModule(64, 64) for _ in range(p)))
        self.b2 = BNPReLU(128 + ci)
        self.down3 = ESPModule(128 + ci, 128, down=True)
        self.level3 = nn.Sequential(*(ESPModule(128, 128) for _ in range(q)))
        self.b3 = BNPReLU(256)
        self.cls3 = nn.Conv2d(256, k, 1, bias=False)
        self.up3 = nn.Sequential(nn.BatchNorm2d(k, eps=1e-3), _deconv(k))
        self.proj2 = nn.Conv2d(128 + ci, k, 1, bias=False)
        self.fuse2 = nn.Sequential(BNPReLU(2 * k), ESPModule(2 * k, k, residual=False))
        self.up2 = nn.Sequential(_deconv(k), BNPReLU(k))
        self.fuse1 = CBR(16 + ci + k, k, 3)
        self.classifier = _deconv(k)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` -> level concats at 1/2, 1/4, 1/8 with ``16+Ci``, ``128+Ci``, 256 maps."""
        l1 = self.b1(torch.cat([self.level1(x), self.img2(x)], dim=1))
        d2 = self.down2(l1)
        l2 = self.b2(torch.cat([self.level2(d2), d2, self.img4(x)], dim=1))
        d3 = self.down3(l2)
        l3 = self.b3(torch.cat([d3, self.level3(d3)], dim=1))
        return l1, l2, l3

    def seg_forward(self, x: Tensor) -> SegOutput:
        """``x``: ``(B, C_in, H, W)`` -> :class:`SegOutput` (see class docstring)."""
        l1, l2, l3 = self.encode(x)
        y = self.up3(self.cls3(l3))
        y = self.up2(self.fuse2(torch.cat([self.proj2(l2), y], dim=1)))
        y = self.fuse1(torch.cat([y, l1], dim=1))
        return SegOutput(self.classifier(y), (l1, l3), y)
