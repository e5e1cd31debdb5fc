"""Which registered models play which role (no heavy imports; safe to import anywhere)."""

from __future__ import annotations

from typing import Literal

Role = Literal["student", "teacher"]

#: In-project students of the paper's Table 2, and torchvision's LR-ASPP MobileNetV3-Large.
STUDENTS: tuple[str, ...] = ("enet", "espnet", "mobilenetv2", "lraspp_mobilenet_v3_large")
#: Third-party teachers of the paper's Table 2.
TEACHERS: tuple[str, ...] = (
    "deeplabv3plus_r50",
    "pspnet_r50",
    "fpn_resnext101_32x8d",
    "fcn_resnet101",
)
#: Tiny teachers for CPU tests and demos (not part of the paper's table; the system benchmarks'
#: ``emulated_accelerator`` is registered by ``bench/emulated_models.py`` only).
TEST_TEACHERS: tuple[str, ...] = ("tiny_unet",)


def role_of(name: str) -> Role:
    """``"student"`` for :data:`STUDENTS`, else ``"teacher"``."""
    return "student" if name in STUDENTS else "teacher"
