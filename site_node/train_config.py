"""Configuration of local teacher training (every hyperparameter is a field)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from common.config import DEVICE_PATTERN, MAX_SEED, StrictModel
from common.data.augment import AugmentConfig


class OptimConfig(StrictModel):
    """Adam + CyclicLR as in the paper (section 4.3): lr 0.01, min lr 1e-6, step size 2000."""

    max_lr: float = Field(default=0.01, gt=0.0, le=10.0)
    base_lr: float = Field(default=1e-6, ge=0.0, le=10.0)
    step_size_up: int = Field(default=2000, ge=1, le=10_000_000)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    cyclic_mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"

    @model_validator(mode="after")
    def _lr_order(self) -> OptimConfig:
        if self.base_lr > self.max_lr:
            raise ValueError(f"base_lr {self.base_lr} must be <= max_lr {self.max_lr}")
        return self


class TeacherTrainConfig(StrictModel):
    """Everything ``site-node train`` needs besides the data and output folders."""

    model: str = "deeplabv3plus_r50"
    size: int | None = Field(default=None, ge=16, le=1024, description="network input side; "
                             "default from the data fingerprint's plan (capped at 384); the "
                             "demo/tests set 64")
    label: str | None = Field(default=None, max_length=200, description="target label: "
                              "dataset.json name or value, '1,2' or 'all'; default the single "
                              "foreground label")
    epochs: int = Field(default=100, ge=1, le=100_000)
    batch_size: int = Field(default=8, ge=1, le=4096)
    patience: int = Field(default=15, ge=1, le=100_000, description="early stopping on val 3D "
                          "Dice")
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    val_fraction: float = Field(default=0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    dice_weight: float = Field(default=1.0, ge=0.0, le=1000.0)
    lovasz_weight: float = Field(default=1.0, ge=0.0, le=1000.0)
    skip_empty_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    device: str = Field(default="auto", pattern=DEVICE_PATTERN)
    amp: bool = True
    num_workers: int = Field(default=0, ge=0, le=64)
    max_steps_per_epoch: int | None = Field(default=None, ge=1)
    small_site: Literal["refuse", "train_on_all"] = Field(
        default="refuse",
        description="a site with fewer than 3 cases (no train/val/test split): 'refuse' stops "
        "with one line naming the minimum; 'train_on_all' trains on every case for exactly "
        "`epochs` epochs, keeps the final weights (never a checkpoint chosen on an empty "
        "validation set) and teacher.json records that there is no held-out score",
    )
    optim: OptimConfig = OptimConfig()
    augment: AugmentConfig = AugmentConfig()

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        """An unknown architecture fails when the config loads, listing the valid names."""
        from common.models import MODELS
        from common.registry import RegistryError

        try:
            MODELS.get(name)
        except RegistryError as exc:
            raise ValueError(str(exc)) from None
        return name

    @model_validator(mode="after")
    def _fractions(self) -> TeacherTrainConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"val_fraction + test_fraction must be < 1, got "
                             f"{self.val_fraction} + {self.test_fraction}")
        return self


def paper_preset(model: str) -> TeacherTrainConfig:
    """The paper's setting: 384x384, 100 epochs, lr 0.01 cyclic, full augmentation."""
    return TeacherTrainConfig(model=model, size=384, epochs=100, batch_size=8)
