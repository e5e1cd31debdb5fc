"""LR-ASPP MobileNetV3-Large student (Howard et al., 2019): torchvision's kept,
deployment-oriented segmentation model, built untrained (``weights=None``,
``weights_backbone=None``; nothing is downloaded) with a 1-channel stem.

torchvision's network is used as is (same modules, same state-dict layout under ``net.``);
:meth:`LRASPPMobileNetV3.seg_forward` runs its layers explicitly to expose the distillation
taps, chosen like EMKD's (as for the project's MobileNetV2):

* ``features[0]``: output of the first inverted-residual block, 16 maps at 1/2 resolution
  (``(B, 16, 192, 192)`` for a 384 px input): the early map;
* ``features[1]``: the 40-map 1/8 "low" branch the head reads (``(B, 40, 48, 48)``);
* ``features[-1]``: the end of the encoder, the 960-map 1/16 "high" map (``(B, 960, 24,
  24)``; the last stage is dilated, output stride 16): the deep map;
* ``decoder``: the head's gated, upsampled 128-map branch at 1/8 (input of its high
  classifier).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from common.models.base import SegModel, SegOutput
from common.models.zoo import register_model

#: Index in ``backbone.features`` whose output is the early tap (first inverted residual).
EARLY_BLOCK = 1
#: BatchNorm momentum of every layer. torchvision's MobileNetV3 uses 0.01 (tuned for long
#: ImageNet schedules): after a short CPU run (~100 steps) its running statistics are still
#: near their initial values and the eval-mode network predicts background everywhere
#: (measured: Dice 0.000 on the phantom scenario after 8 epochs). 0.1 is PyTorch's default,
#: as in the other students.
BN_MOMENTUM = 0.1


@register_model("lraspp_mobilenet_v3_large")
class LRASPPMobileNetV3(SegModel):
    """torchvision ``lraspp_mobilenet_v3_large`` (random init). ``seg_forward``: ``(B, C_in,
    H, W)`` (H, W divisible by 16) -> logits ``(B, K, H, W)``, features ``((B, 16, H/2, W/2),
    (B, 40, H/8, W/8), (B, 960, H/16, W/16))``, decoder ``(B, 128, H/8, W/8)``.
    ~3.2M parameters for ``in_channels=1, num_classes=2``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        self.net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                             num_classes=num_classes)
        stem = self.net.backbone["0"][0]
        if in_channels != stem.in_channels:
            self.net.backbone["0"][0] = nn.Conv2d(
                in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                bias=False)
        for m in self.net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = BN_MOMENTUM
        block_of = {v: k for k, v in self.net.backbone.return_layers.items()}
        self.low_key, self.high_key = block_of["low"], block_of["high"]

    def seg_forward(self, x: Tensor) -> SegOutput:
        """``x``: ``(B, C_in, H, W)`` -> :class:`SegOutput` (see the class docstring)."""
        taps: dict[str, Tensor] = {}
        y = x
        for name, block in self.net.backbone.items():
            y = block(y)
            if name in (str(EARLY_BLOCK), self.low_key, self.high_key):
                taps[name] = y
        early, low, high = taps[str(EARLY_BLOCK)], taps[self.low_key], taps[self.high_key]
        head = self.net.classifier
        gated = head.cbr(high) * head.scale(high)
        decoder = F.interpolate(gated, size=low.shape[-2:], mode="bilinear",
                                align_corners=False)
        out = head.low_classifier(low) + head.high_classifier(decoder)
        logits = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return SegOutput(logits, (early, low, high), decoder)
