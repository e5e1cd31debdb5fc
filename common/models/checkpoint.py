"""Save/load model checkpoints that record how to rebuild the architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common.models import build_model
from common.models.base import SegModel


class CheckpointError(ValueError):
    """A checkpoint file is missing or unusable; the message names the file."""


def model_state(model: torch.nn.Module, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The architecture-describing part of a checkpoint (what :func:`load_model` reads)."""
    return {"model_name": name, "model_kwargs": kwargs, "model": model.state_dict()}


def load_model(path: Path, map_location: str | torch.device = "cpu") -> tuple[SegModel, dict]:
    """Rebuild the model saved in ``path``; return ``(model in eval mode, checkpoint dict)``."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
        model = build_model(ckpt["model_name"], **ckpt["model_kwargs"])
        model.load_state_dict(ckpt["model"])
    except Exception as exc:  # a corrupt pickle raises UnpicklingError, ValueError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path}: not a usable fedmtkd checkpoint "
                              f"({type(exc).__name__}: {first})") from None
    return model.eval(), ckpt
