"""Model zoo: teachers (smp / torchvision adapters) and in-project students.

Every entry is built with :func:`build_model` and returns :class:`SegOutput` from
``seg_forward``. Factories take ``in_channels`` and ``num_classes`` keyword arguments.
"""

from __future__ import annotations

# Explicit imports fill the registry (no filesystem scanning).
from common.models import enet, espnet, lraspp, mobilenetv2, teachers  # noqa: F401
from common.models.base import SegModel, SegOutput, count_params
from common.models.zoo import MODELS, build_model, register_model

__all__ = ["MODELS", "SegModel", "SegOutput", "build_model", "count_params", "register_model"]
