"""The model registry (``MODELS``): filled by the model modules, read by :func:`build_model`.

Kept apart from the package ``__init__`` so that the model modules register themselves without
importing their own package (no import cycle); ``common.models`` re-exports these names.
"""

from __future__ import annotations

from common.models.base import SegModel
from common.registry import Registry

MODELS: Registry[SegModel] = Registry("model")
register_model = MODELS.register


def build_model(name: str, **kwargs: object) -> SegModel:
    """Build a registered model by name; unknown names list the valid ones."""
    return MODELS.build(name, **kwargs)
