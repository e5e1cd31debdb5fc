"""Model zoo: teachers (smp / torchvision adapters) and in-project students.

Every entry is built with :func:`build_model` and returns :class:`SegOutput` from
``seg_forward``. Factories take ``in_channels`` and ``num_classes`` keyword arguments.
"""

from __future__ import annotations

from common.models.base import SegModel, SegOutput, count_params
from common.registry import Registry

MODELS: Registry[SegModel] = Registry("model")
register_model = MODELS.register


def build_model(name: str, **kwargs: object) -> SegModel:
    """Build a registered model by name; unknown names list the valid ones."""
    return MODELS.build(name, **kwargs)


# Explicit imports fill the registry (no filesystem scanning).
from common.models import enet, espnet, mobilenetv2, teachers  # noqa: E402,F401

__all__ = ["MODELS", "SegModel", "SegOutput", "build_model", "count_params", "register_model"]
