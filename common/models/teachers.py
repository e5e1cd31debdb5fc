"""Teacher adapters: third-party networks (smp, torchvision) behind the :class:`SegModel`
contract, plus ``tiny_unet`` for fast CPU tests and demos.

Features are tapped by calling the wrapped network's pieces in order inside ``seg_forward``
(no forward hooks). Shapes below are for an ``(B, 1, 384, 384)`` input:

=====================  ================================  ====================================
name                   ``features[0]`` (early, 1/2)      ``features[-1]`` (deep, encoder end)
=====================  ================================  ====================================
deeplabv3plus_r50      conv1+bn+relu (B, 64, 192, 192)   layer4, OS 16 (B, 2048, 24, 24)
pspnet_r50             conv1+bn+relu (B, 64, 192, 192)   layer2, depth 3 (B, 512, 48, 48)
fpn_resnext101_32x8d   conv1+bn+relu (B, 64, 192, 192)   layer4 (B, 2048, 12, 12)
fcn_resnet101          conv1+bn+relu (B, 64, 192, 192)   layer4, OS 8 (B, 2048, 48, 48)
tiny_unet              stem (B, 16, 192, 192)            bottom (B, 64, 48, 48)
=====================  ================================  ====================================

``decoder`` (the classifier's input, tapped with ``feature_taps = "decoder"``): the smp
decoder's output (DeepLabV3+ 256 maps at 1/4, PSPNet 512 at 1/8, FPN 128 at 1/4), the FCN
head before its last 1x1 conv (512 at 1/8), tiny_unet's last up block (``w`` at 1/2).

No pretrained weights are ever downloaded (``encoder_weights=None``, ``weights=None``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.models.base import SegModel, SegOutput
from common.models.zoo import register_model


class SmpTeacher(SegModel):
    """Adapter for an smp ``SegmentationModel`` (encoder -> decoder -> segmentation head).

    ``seg_forward``: ``(B, C_in, H, W)`` (H, W divisible by 32) -> logits ``(B, K, H, W)``,
    features ``(encoder stage 1 at 1/2, last encoder stage)``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def seg_forward(self, x: Tensor) -> SegOutput:
        """``x``: ``(B, C_in, H, W)`` -> :class:`SegOutput`."""
        net: Any = self.net  # smp SegmentationModel: encoder, decoder, segmentation_head
        feats = net.encoder(x)  # [x, 1/2, 1/4, ...]
        dec = net.decoder(feats)
        return SegOutput(net.segmentation_head(dec), (feats[1], feats[-1]), dec)


def _smp(arch: str, encoder_name: str, in_channels: int, num_classes: int, **kw: Any) -> nn.Module:
    import segmentation_models_pytorch as smp  # heavy import, kept local

    cls = getattr(smp, arch)
    return cls(encoder_name, encoder_weights=None, in_channels=in_channels, classes=num_classes,
               **kw)  # fmt: skip


@register_model("deeplabv3plus_r50")
def deeplabv3plus_r50(in_channels: int = 1, num_classes: int = 2,
                      encoder_name: str = "resnet50") -> SmpTeacher:  # fmt: skip
    """smp DeepLabV3+ (ResNet-50, OS 16); 26.7M parameters for 1 channel, 2 classes.

    Training needs batches of at least 2 (the ASPP image-pooling branch has BatchNorm on a
    1x1 map); use ``drop_last=True`` in training loaders.
    """
    return SmpTeacher(_smp("DeepLabV3Plus", encoder_name, in_channels, num_classes))


@register_model("pspnet_r50")
def pspnet_r50(in_channels: int = 1, num_classes: int = 2, encoder_name: str = "resnet50",
               prune_unused: bool = True) -> SmpTeacher:  # fmt: skip
    """smp PSPNet (ResNet-50, encoder depth 3, output at 1/8, x8 upsampling head).

    smp keeps ``layer3``/``layer4`` of the encoder although depth 3 never runs them: the stock
    model has 24.3M parameters (the figure in the paper's Table 2) of which ~22M receive no
    gradient. ``prune_unused=True`` (default) deletes those dead layers (2.2M parameters, same
    outputs and FLOPs); ``prune_unused=False`` keeps the stock smp module for comparisons.
    """
    net = _smp("PSPNet", encoder_name, in_channels, num_classes)
    if prune_unused:
        for name in ("layer3", "layer4"):
            if hasattr(net.encoder, name):
                delattr(net.encoder, name)
    return SmpTeacher(net)


@register_model("fpn_resnext101_32x8d")
def fpn_resnext101_32x8d(in_channels: int = 1, num_classes: int = 2,
                         encoder_name: str = "resnext101_32x8d") -> SmpTeacher:  # fmt: skip
    """smp FPN (ResNeXt-101 32x8d); 89.3M parameters for 1 channel, 2 classes."""
    return SmpTeacher(_smp("FPN", encoder_name, in_channels, num_classes))


@register_model("fcn_resnet101")
class FCNResNet101(SegModel):
    """torchvision FCN-ResNet101 (dilated, OS 8, no aux head), stem conv replaced so it takes
    ``in_channels`` maps; 51.9M parameters for 1 channel, 2 classes.

    ``seg_forward``: ``(B, C_in, H, W)`` -> logits ``(B, K, H, W)`` (bilinear x8), features
    ``((B, 64, H/2, W/2), (B, 2048, H/8, W/8))``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        from torchvision.models.segmentation import fcn_resnet101

        net = fcn_resnet101(weights=None, weights_backbone=None, num_classes=num_classes,
                            aux_loss=False)  # fmt: skip
        net.backbone.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.backbone = net.backbone  # IntermediateLayerGetter: conv1 .. layer4 (no fc)
        self.classifier = net.classifier

    def seg_forward(self, x: Tensor) -> SegOutput:
        """``x``: ``(B, C_in, H, W)`` -> :class:`SegOutput`."""
        b = self.backbone
        early = b.relu(b.bn1(b.conv1(x)))
        deep = b.layer4(b.layer3(b.layer2(b.layer1(b.maxpool(early)))))
        dec = deep
        for layer in list(self.classifier)[:-1]:  # FCNHead up to (not incl.) its last 1x1 conv
            dec = layer(dec)
        logits = F.interpolate(self.classifier[-1](dec), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)  # fmt: skip
        return SegOutput(logits, (early, deep), dec)


def _double_conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """Two 3x3 conv+BN+ReLU: ``(B, cin, H, W)`` -> ``(B, cout, H/stride, W/stride)``."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
    )  # fmt: skip


@register_model("tiny_unet")
class TinyUNet(SegModel):
    """Small UNet-like teacher (~0.1M parameters) for CPU tests and demos.

    Encoder: strided double convs to 1/2 (``w``), 1/4 (``2w``), 1/8 (``4w``); decoder: bilinear
    x2 + skip concat + 3x3 conv, twice, then x2 and a 1x1 head. ``seg_forward``: ``(B, C_in, H,
    W)`` (H, W divisible by 8) -> logits ``(B, K, H, W)``, features ``((B, w, H/2, W/2), (B,
    4w, H/8, W/8))``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = _double_conv(in_channels, w, 2)
        self.down1 = _double_conv(w, 2 * w, 2)
        self.down2 = _double_conv(2 * w, 4 * w, 2)
        self.up1 = _double_conv(6 * w, 2 * w)
        self.up2 = _double_conv(3 * w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    @staticmethod
    def _up_cat(x: Tensor, skip: Tensor) -> Tensor:
        """Upsample ``x`` to ``skip``'s size and concatenate along channels."""
        up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([up, skip], dim=1)

    def seg_forward(self, x: Tensor) -> SegOutput:
        """``x``: ``(B, C_in, H, W)`` -> :class:`SegOutput` (see class docstring)."""
        s1 = self.stem(x)
        s2 = self.down1(s1)
        deep = self.down2(s2)
        y = self.up2(self._up_cat(self.up1(self._up_cat(deep, s2)), s1))
        logits = F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)  # fmt: skip
        return SegOutput(logits, (s1, deep), y)
