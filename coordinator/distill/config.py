"""Experiment configuration for ``coordinator distill`` (TOML/YAML -> pydantic).

Registry names are checked when the config loads: ``student.model`` against the model
registry, each ``runs.weightings[].name`` against the teacher-weighting registry; an unknown
name fails at once and lists the valid ones (not hours into a run).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from common.config import (
    DEVICE_PATTERN,
    MAX_SEED,
    SafeName,
    StrictModel,
    first_error,
    safe_run_name,
)
from common.data.augment import AugmentConfig

if TYPE_CHECKING:
    from common.registry import Registry


def _registered(registry: Registry[Any], name: str) -> str:
    """``name`` if ``registry`` knows it, else a ValueError listing the valid names."""
    from common.registry import RegistryError

    try:
        registry.get(name)
    except RegistryError as exc:
        raise ValueError(str(exc)) from None
    return name


def registered_model(name: str) -> str:
    """``name`` if the model registry knows it, else a ValueError listing the valid names."""
    from common.models import MODELS

    return _registered(MODELS, name)


def registered_weighting(name: str) -> str:
    """``name`` if the teacher-weighting registry knows it, else a ValueError listing them."""
    from common.kd.fusion import WEIGHTINGS

    return _registered(WEIGHTINGS, name)


class SiteSpec(StrictModel):
    """One hospital: its private data folder and its teacher run folder (``best.pt``, split)."""

    name: SafeName  # a folder / file name part: no '/', no leading '.'
    data: Path
    teacher_dir: Path


class KDConfig(StrictModel):
    """KD = Seg + alpha*Mid + beta*KL (paper Eq. 6), with the paper-flaw switches."""

    alpha: float = Field(default=0.1, ge=0.0, le=1000.0)
    beta: float = Field(default=0.1, ge=0.0, le=1000.0)
    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    dice_weight: float = Field(default=0.2, ge=0.0, le=1000.0)
    lovasz_weight: float = Field(default=0.3, ge=0.0, le=1000.0)
    kl_direction: Literal["teacher_student", "student_teacher"] = "teacher_student"
    at_form: Literal["zagoruyko", "paper"] = "zagoruyko"
    at_p: int = Field(default=2, ge=1, le=8)
    at_reduce: Literal["sum", "mean"] = "sum"  # zagoruyko AT over positions; "mean" ~1e-5 scale
    kl_t2: bool = True  # Hinton's T^2 on the KL; the paper's Eq. 2 has none
    # Padding is not anatomy. "exclude": the plan's canvas around each resampled slice and what
    # augmentation brings in are left out of every pixel term (Seg, KL, AT, student RC), so the
    # loss does not depend on how much empty canvas surrounds the slice (a 256 px canvas round
    # 96 px of anatomy is 86 % padding). "augment_kd": only augmentation padding, out of KL /
    # AT / RC only (the earlier behaviour: reproduces its results). "none": no masking.
    padding: Literal["exclude", "augment_kd", "none"] = "exclude"
    # "emkd": early 1/2 + end-of-encoder maps; "decoder": end of encoder + decoder (paper text;
    # local runs only for now: the federated query protocol carries the EMKD maps)
    feature_taps: Literal["emkd", "decoder"] = "emkd"
    # weight of region contrast inside Mid (1: paper Eq. 4; 0: attention transfer alone)
    rc_weight: float = Field(default=1.0, ge=0.0, le=1000.0)
    # Proxy fields wider than a teacher's canvas: "centre" answers the centre tile only (outside
    # it the teacher says background); "whole" tiles the field with half-overlapping teacher
    # windows and blends their logits (MONAI sliding window, Gaussian). Attention maps and region
    # contrast stay the centre tile's either way (common.kd.plan_bridge). Sent to the sites.
    teacher_field: Literal["centre", "whole"] = "centre"


ROW_SHARED_KD = ("at_form", "at_p", "feature_taps", "teacher_field")
"""KD settings every row shares: the teachers' attention maps are computed once with them."""


class StudentTrainConfig(StrictModel):
    """Student optimisation (Adam + CyclicLR as the paper), sizes and runtime switches."""

    # The default student: torchvision's LR-ASPP MobileNetV3-Large, the fastest deployed student
    # within 0.01 Dice of ENet on the benchmark's prostate scenario (docs/BENCHMARKS.md,
    # "Which student"); the paper's ENet, ESPNet and MobileNetV2 stay one name away.
    model: str = "lraspp_mobilenet_v3_large"
    size: int = Field(default=64, ge=16, le=1024)
    epochs: int = Field(default=20, ge=1, le=100_000)
    batch_size: int = Field(default=16, ge=1, le=4096)
    max_lr: float = Field(default=0.005, gt=0.0, le=10.0)
    base_lr: float = Field(default=1e-6, ge=0.0, le=10.0)
    step_size_up: int = Field(default=200, ge=1, le=10_000_000)
    weight_decay: float = Field(default=1e-5, ge=0.0, le=1.0)
    device: str = Field(default="auto", pattern=DEVICE_PATTERN)
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    teacher_batch_size: int = Field(default=16, ge=1, le=4096)
    augment: AugmentConfig = AugmentConfig()
    # The student's in-plane spacing (its plan, from the proxy set's fingerprint). "fill": the
    # spacing at which the median field of view fills `size` (finer than the median spacing
    # when `size` is larger than the median slice). "median": nnU-Net's rule, the median
    # spacing, coarsened only when the median slice does not fit (a larger `size` then pads the
    # canvas: at 256 px round 96 px phantoms that cost 0.09 Dice, docs/BENCHMARKS.md). The two
    # agree whenever `size` is at most the median slice.
    spacing_rule: Literal["fill", "median"] = "fill"

    _known_model = field_validator("model")(registered_model)

    @property
    def fills_canvas(self) -> bool:
        """True for ``spacing_rule = "fill"``."""
        return self.spacing_rule == "fill"

    @model_validator(mode="after")
    def _lr_order(self) -> StudentTrainConfig:
        if self.base_lr > self.max_lr:
            raise ValueError(f"base_lr {self.base_lr} must be <= max_lr {self.max_lr}")
        return self


class WeightingSpec(StrictModel):
    """A teacher-weighting rule by registry name plus its keyword arguments, and optional
    overrides for its row only: ``label`` (the row is ``multi_<label>``; default the computed
    label), ``kd`` (``KDConfig`` fields over ``[kd]``) and ``student`` (a model registry name
    instead of ``[student] model``). Everything else (seeds, data, schedule) is the
    experiment's, so rows stay paired."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    row_label: str | None = Field(default=None, alias="label", max_length=120)
    kd: dict[str, Any] = Field(default_factory=dict)
    student: str | None = None

    _known_name = field_validator("name")(registered_weighting)

    @model_validator(mode="after")
    def _buildable(self) -> WeightingSpec:
        """Unknown or ill-typed ``kwargs`` and overrides fail when the config loads, naming
        the row, not at training time."""
        from common.kd.fusion import build_weighting

        try:
            build_weighting(self.name, **self.kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"weighting {self.name!r}: {exc}") from None
        safe_run_name(f"multi_{self.label}")  # the label names the run's folder
        row = f"row 'multi_{self.label}'"
        self.kd_overrides()  # validates
        if self.student is not None:
            try:
                registered_model(self.student)
            except ValueError as exc:
                raise ValueError(f"{row}: student: {exc}") from None
        return self

    def kd_overrides(self, base: KDConfig | None = None) -> KDConfig:
        """``base`` (default ``KDConfig()``) with this row's ``kd`` overrides, validated; a
        ValueError naming the row and the field otherwise."""
        row = f"row 'multi_{self.label}'"
        unknown = sorted(set(self.kd) - set(KDConfig.model_fields))
        if unknown:
            raise ValueError(f"{row}: kd.{unknown[0]} is not a KD setting (valid: "
                             f"{', '.join(KDConfig.model_fields)})")
        shared = sorted(set(self.kd) & set(ROW_SHARED_KD))
        if shared:
            raise ValueError(f"{row}: kd.{shared[0]} cannot differ per row (the teachers' "
                             f"attention maps are computed once; set it in [kd])")
        try:
            return KDConfig.model_validate({**(base or KDConfig()).model_dump(), **self.kd})
        except ValidationError as exc:
            loc, msg = first_error(exc)
            raise ValueError(f"{row}: kd.{loc}: {msg}") from None

    @property
    def overrides(self) -> bool:
        """True when the row changes the KD settings or the student model."""
        return bool(self.kd) or self.student is not None

    def identity(self) -> dict[str, Any]:
        """JSON of the rule for result identity: name and kwargs, plus the row overrides only
        when set (a row without them keeps the identity it had before overrides existed)."""
        out = self.model_dump(mode="json", include={"name", "kwargs"})
        kd = self.kd_overrides().model_dump(mode="json", include=set(self.kd))  # 0 -> 0.0
        out.update({k: v for k, v in (("label", self.row_label), ("kd", kd),
                                      ("student", self.student)) if v})
        return out

    @property
    def label(self) -> str:
        """Short label for result tables, e.g. ``inverse_dice_loss`` or ``fixed(0.5,0.3,0.2)``;
        the ``label`` override when given."""
        if self.row_label is not None:
            return self.row_label
        if not self.kwargs:
            return self.name
        args = ",".join(f"{v}" for v in self.kwargs.values())
        return f"{self.name}({args})"


def row_config(cfg: ExperimentConfig, spec: WeightingSpec | None) -> ExperimentConfig:
    """``cfg`` as one row trains it: its ``kd`` overrides and ``student`` model applied
    (``cfg`` itself for a row without overrides)."""
    if spec is None or not spec.overrides:
        return cfg
    student = cfg.student if spec.student is None else cfg.student.model_copy(
        update={"model": spec.student})
    return cfg.model_copy(update={"kd": spec.kd_overrides(cfg.kd), "student": student})


class FedAvgSpec(StrictModel):
    """The FedAvg baseline row: Flower's ``FedAvg`` strategy over the same student,
    ``rounds`` rounds of ``local_epochs`` epochs on each site's private training split."""

    rounds: int = Field(default=5, ge=1, le=10_000)
    local_epochs: int = Field(default=1, ge=1, le=10_000)
    fraction_train: float = Field(default=1.0, gt=0.0, le=1.0)


class FedProxSpec(FedAvgSpec):
    """The FedProx peer row (Li et al. 2020): Flower's ``FedProx`` strategy (it sends ``mu``
    as ``proximal-mu``); each site adds ``mu/2 * ||w - w_global||^2`` to its local loss."""

    mu: float = Field(default=0.01, ge=0.0, le=1000.0)


class FedBNSpec(FedAvgSpec):
    """The FedBN peer row (Li et al. 2021): Flower's ``FedAvg`` over every weight except the
    BatchNorm layers', which stay at each site (kept between rounds, used to score its cases)."""


class RunsConfig(StrictModel):
    """Which rows of the paper's Tables 3-5 to produce, plus the peer baselines
    (``local_only``, ``pooled``, ``fedavg``, ``fedprox``, ``fedbn``;
    :mod:`coordinator.baselines`)."""

    baseline: bool = True
    single_teacher: bool = True
    #: each teacher scored on every site's test set (Table 3's top block); off for a run that
    #: shares another run's teachers and test sets (an ablation, a proxy-size run)
    teacher_rows: bool = True
    weightings: list[WeightingSpec] = Field(
        default_factory=lambda: [WeightingSpec(name=n) for n in
                                 ("inverse_dice_loss", "equal", "select_best", "paper", "entropy")]
    )
    local_only: bool = False  # one student per site on its private training split
    pooled: bool = False  # one student on every site's training split + proxy (not federated)
    fedavg: FedAvgSpec | None = None  # [runs.fedavg] enables the FedAvg row
    fedprox: FedProxSpec | None = None  # [runs.fedprox] enables the FedProx row
    fedbn: FedBNSpec | None = None  # [runs.fedbn] enables the FedBN row
    query_chunk_size: int = Field(default=128, ge=1, le=100_000, description="proxy slices "
                                  "per query message when --local counts MT-KD's bytes")
    left_out: list[str] = Field(default_factory=list, max_length=1000, description="rows of "
                                "the config this run leaves out (set by distill --rows; named "
                                "in the report)")

    @model_validator(mode="after")
    def _unique_rows(self) -> RunsConfig:
        """Two weighting rows with one label would share a run folder."""
        seen: set[str] = set()
        for w in self.weightings:
            if w.label in seen:
                raise ValueError(f"row 'multi_{w.label}' appears twice in runs.weightings; "
                                 "give one a different label")
            seen.add(w.label)
        return self


class ExperimentConfig(StrictModel):
    """A whole distillation experiment: proxy set, sites, student, KD and which runs to do."""

    name: SafeName = "experiment"
    out: Path = Path("runs/experiment")
    proxy: Path
    proxy_label: str | None = Field(default=None, max_length=200, description="target label "
                                    "of the proxy set (dataset.json name or value, '1,2' or "
                                    "'all')")
    sites: list[SiteSpec] = Field(max_length=1000)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    repeats: int = Field(default=1, ge=1, le=100)  # seeds seed .. seed+repeats-1; rows = mean
    min_sites: int | None = Field(default=None, ge=1, le=1000, description=(
        "fewest sites a run goes on with (None: every site of the config; a federated run "
        "with fewer fails and names the missing sites)"))
    teacher_proxy_dice_floor: float | None = Field(default=None, gt=0.0, le=1.0, description=(
        "refuse to train students when a teacher's Dice on the labelled proxy slices is below "
        "this fraction of its own validation Dice (None: only warn, below 0.8 of it)"))
    memory_cap_gb: float | None = Field(default=None, gt=0.0, le=65536.0, description=(
        "refuse a run whose estimated coordinator memory exceeds this many GB (None: the "
        "machine's available RAM; coordinator/distill/memory.py)"))
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
