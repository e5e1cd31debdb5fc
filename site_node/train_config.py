"""Configuration of local teacher training (every hyperparameter is a field)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from common.config import StrictModel
from common.data.augment import AugmentConfig


class OptimConfig(StrictModel):
    """Adam + CyclicLR as in the paper (section 4.3): lr 0.01, min lr 1e-6, step size 2000."""

    max_lr: float = 0.01
    base_lr: float = 1e-6
    step_size_up: int = 2000
    weight_decay: float = 0.0
    cyclic_mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"


class TeacherTrainConfig(StrictModel):
    """Everything ``site-node train`` needs besides the data and output folders."""

    model: str = "deeplabv3plus_r50"
    size: int = Field(default=64, description="slice side after resize (paper: 384)")
    epochs: int = 100
    batch_size: int = 8
    patience: int = Field(default=15, description="early stopping on val 3D Dice")
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    dice_weight: float = 1.0
    lovasz_weight: float = 1.0
    skip_empty_fraction: float = 0.5
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    max_steps_per_epoch: int | None = None
    optim: OptimConfig = OptimConfig()
    augment: AugmentConfig = AugmentConfig()


def paper_preset(model: str) -> TeacherTrainConfig:
    """The paper's setting: 384x384, 100 epochs, lr 0.01 cyclic, full augmentation."""
    return TeacherTrainConfig(model=model, size=384, epochs=100, batch_size=8)
