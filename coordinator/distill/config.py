"""Experiment configuration for ``coordinator distill`` (TOML/YAML -> pydantic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from common.config import StrictModel
from common.data.augment import AugmentConfig


class SiteSpec(StrictModel):
    """One hospital: its private data folder and its teacher run folder (``best.pt``, split)."""

    name: str
    data: Path
    teacher_dir: Path


class KDConfig(StrictModel):
    """KD = Seg + alpha*Mid + beta*KL (paper Eq. 6), with the paper-flaw switches."""

    alpha: float = 0.1
    beta: float = 0.1
    temperature: float = 4.0
    dice_weight: float = 0.2
    lovasz_weight: float = 0.3
    kl_direction: Literal["teacher_student", "student_teacher"] = "teacher_student"
    at_form: Literal["zagoruyko", "paper"] = "zagoruyko"
    at_p: int = 2


class StudentTrainConfig(StrictModel):
    """Student optimisation (Adam + CyclicLR as the paper), sizes and runtime switches."""

    model: str = "enet"
    size: int = 64
    epochs: int = 20
    batch_size: int = 16
    max_lr: float = 0.005
    base_lr: float = 1e-6
    step_size_up: int = 200
    weight_decay: float = 1e-5
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    teacher_batch_size: int = 16
    augment: AugmentConfig = AugmentConfig()


class WeightingSpec(StrictModel):
    """A teacher-weighting rule by registry name plus its keyword arguments."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short label for result tables, e.g. ``inverse_dice_loss`` or ``fixed(0.5,0.3,0.2)``."""
        if not self.kwargs:
            return self.name
        args = ",".join(f"{v}" for v in self.kwargs.values())
        return f"{self.name}({args})"


class RunsConfig(StrictModel):
    """Which rows of the paper's Tables 3-5 to produce."""

    baseline: bool = True
    single_teacher: bool = True
    weightings: list[WeightingSpec] = Field(
        default_factory=lambda: [WeightingSpec(name=n) for n in
                                 ("inverse_dice_loss", "equal", "select_best", "paper", "entropy")]
    )


class ExperimentConfig(StrictModel):
    """A whole distillation experiment: proxy set, sites, student, KD and which runs to do."""

    name: str = "experiment"
    out: Path = Path("runs/experiment")
    proxy: Path
    sites: list[SiteSpec]
    seed: int = 0
    repeats: int = Field(default=1, ge=1)  # student seeds seed .. seed+repeats-1; rows = mean
    min_sites: int = 1
    student: StudentTrainConfig = StudentTrainConfig()
    kd: KDConfig = KDConfig()
    runs: RunsConfig = RunsConfig()

    @model_validator(mode="after")
    def _unique_sites(self) -> ExperimentConfig:
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique, got {names}")
        if not self.sites:
            raise ValueError("at least one site is required")
        return self

    def resolve_paths(self, base: Path) -> ExperimentConfig:
        """Make relative paths relative to the config file's folder ``base``."""
        def fix(p: Path) -> Path:
            return p if p.is_absolute() else (base / p).resolve()

        sites = [s.model_copy(update={"data": fix(s.data), "teacher_dir": fix(s.teacher_dir)})
                 for s in self.sites]
        return self.model_copy(update={"out": fix(self.out), "proxy": fix(self.proxy),
                                       "sites": sites})


def paper_preset(cfg: ExperimentConfig) -> ExperimentConfig:
    """The paper's sizes: 384x384 slices, 100 epochs, lr 0.01 cyclic (step 2000), batch 8."""
    student = cfg.student.model_copy(update={
        "size": 384, "epochs": 100, "batch_size": 8, "max_lr": 0.01, "step_size_up": 2000,
    })
    return cfg.model_copy(update={"student": student, "kd": KDConfig()})
