"""Message types, record keys and the pydantic payload models of the wire schema.

Part of :mod:`common.protocol` (see its docstring for the message table).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from common.config import MAX_NAME_LEN, RunId, RunName, SafeName, StrictModel, first_error
from common.teacher_fields import FEATURE_FIELDS

if TYPE_CHECKING:
    from common.compress import CompressionConfig
    from common.data.plan import Plan


#: Wire bounds of a ``query.teacher_outputs`` request, no looser than the largest side and slice
#: count any site policy may allow (``site_node.policy.EgressPolicy`` caps its own values here).
MAX_QUERY_SIDE = 512
MAX_QUERY_SLICES = 1024


class ProtocolError(ValueError):
    """A message does not follow the wire schema; the message names the peer and the key."""


class MsgType(StrEnum):
    """Flower message types used by fedmtkd."""

    TRAIN = "train"
    QUERY = "query.teacher_outputs"
    EVALUATE = "evaluate"


class Key(StrEnum):
    """Record keys (top level of a RecordDict) and array keys (inside an ArrayRecord)."""

    CONFIG = "config"
    SITE = "site"
    METRICS = "metrics"
    ARRAYS = "arrays"
    STUDENT = "student"
    IMAGES = "images"
    MASKS = "masks"
    LOGITS = "logits"
    AT_EARLY = "at_early"
    AT_DEEP = "at_deep"
    RC_EARLY = "rc_early"
    RC_DEEP = "rc_deep"
    RECEIPT = "receipt"
    UNDEFINED = "undefined"
    HEAD = "head"
    LAYOUT = "layout"  # evaluate request: names, dtypes and shapes of the packed student
    CASES = "cases"  # evaluate reply: per-test-case scores (``caseNNN.<metric>``)


#: The teacher outputs but the logits (``common.teacher_fields``), as array keys.
FEATURE_KEYS = tuple(Key(n) for n in FEATURE_FIELDS)

# ----------------------------------------------------------------------------- payload models
class TrainConfig(StrictModel):
    """``train`` request: reuse the site's teacher unless ``force_retrain``; optional overrides."""

    run_id: RunId = ""
    force_retrain: bool = False
    model: str = Field(default="", max_length=MAX_NAME_LEN)  # "" = the site's default
    epochs: int = Field(default=0, ge=0, le=100_000)  # 0 = the site's default
    size: int = Field(default=0, ge=0, le=1024)  # 0 = the site's default, else >= 16

    @field_validator("size")
    @classmethod
    def _size(cls, v: int) -> int:
        if 0 < v < 16:
            raise ValueError(f"size must be 0 (site default) or 16..1024, got {v}")
        return v


class LogHead(StrictModel):
    """``head`` record (ConfigRecord), optional on every message in both directions: the
    sender's exchange log's signed head, so each side keeps the other's (log anchoring, issue
    13; :mod:`common.audit.anchor`). ``head_seq``/``head_hash``: the last entry's ``seq`` and
    ``entry_hash`` (0 and 64 zeros for an empty log); ``head_pub``: the raw Ed25519 public
    key (hex) whose fingerprint is ``head_signer``; ``head_sig``: its signature over
    ``b"fedmtkd-log-head\n<seq>\n<entry_hash>"`` (hex). The receiver checks the signature
    and that heads of one signer never go backwards."""

    head_seq: int = Field(ge=0, le=10**12)
    head_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    head_signer: str = Field(pattern=r"^ed25519:[0-9a-f]{64}$")
    head_pub: str = Field(pattern=r"^[0-9a-f]{64}$")
    head_sig: str = Field(pattern=r"^[0-9a-f]{128}$")


class SiteInfo(StrictModel):
    """Who answers: the site's name (``site-name`` node config)."""

    site_name: SafeName  # names the site's key file on the coordinator: no path characters


NORM_CODES = {"mri": 1, "ct": 2}  # TrainReply.plan_norm (a MetricRecord carries numbers only)


MAX_REASON_LEN = 120  # a reason is a scalar string: the egress policy caps those at 128


class MetricsReply(StrictModel):
    """Base of the metrics-only replies (``train``, ``evaluate``).

    A metric that is undefined (computed as NaN or infinite: HD95 when every case has an empty
    prediction or truth, a mean over no case, no validation case) is null, and ``undefined``
    maps its name to a one-line reason; a null without a reason, or a reason for a defined
    metric, is invalid. On the wire the ``metrics`` record carries the defined values only and
    the reasons travel in an ``undefined`` ConfigRecord (only when there is one), so nothing
    non-finite is ever sent, logged or refused for being non-finite."""

    undefined: dict[str, str] = Field(default_factory=dict, max_length=16)

    @classmethod
    def reason(cls, name: str, data: dict[str, Any]) -> str:
        """Why ``name`` is undefined, given the raw values (subclasses say more)."""
        return "not a finite number"

    @model_validator(mode="before")
    @classmethod
    def _nonfinite_to_null(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out, why = dict(data), dict(data.get("undefined") or {})
        for name, value in data.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[name] = None
                why.setdefault(name, cls.reason(name, data)[:MAX_REASON_LEN])
        if why:
            out["undefined"] = why
        return out

    @model_validator(mode="after")
    def _null_iff_reason(self) -> MetricsReply:
        nulls = {k for k in type(self).model_fields if getattr(self, k) is None}
        if nulls != set(self.undefined):
            raise ValueError(f"null metrics {sorted(nulls)} must be exactly those with a reason "
                             f"in 'undefined' {sorted(self.undefined)}")
        if any(len(v) > MAX_REASON_LEN for v in self.undefined.values()):
            raise ValueError(f"an 'undefined' reason is longer than {MAX_REASON_LEN} characters")
        return self

    def metrics(self) -> dict[str, Any]:
        """The defined metric values (what the ``metrics`` record carries)."""
        return {k: v for k, v in self.model_dump(exclude={"undefined"}).items() if v is not None}

    def summary(self) -> dict[str, Any]:
        """Metrics with NaN for the undefined ones (the in-memory convention of
        :mod:`common.io`: written as null) plus ``undefined``."""
        return {**{k: (math.nan if v is None else v)
                   for k, v in self.model_dump(exclude={"undefined"}).items()},
                "undefined": dict(self.undefined)}


class TrainReply(MetricsReply):
    """``train`` reply metrics: the teacher's validation 3D Dice and its number of cases, and
    its plan's aggregate facts: in-plane spacing ``plan_spacing_y/x`` mm (0: the
    legacy "fit" plan, no fixed spacing), side ``plan_size`` px and normalisation kind
    ``plan_norm`` (:data:`NORM_CODES`); all 0 for a teacher without a plan."""

    val_dice: float | None = None  # null: no validation case (reason in ``undefined``)
    case_count: int
    plan_spacing_y: float = Field(default=0.0, ge=0.0, le=1000.0)
    plan_spacing_x: float = Field(default=0.0, ge=0.0, le=1000.0)
    plan_size: int = Field(default=0, ge=0, le=4096)
    plan_norm: int = Field(default=0, ge=0, le=2)

    @staticmethod
    def plan_fields(plan: Plan | None) -> dict[str, float | int]:
        """The ``plan_*`` fields for a teacher's plan (all 0 for None)."""
        if plan is None:
            return {}
        sy, sx = plan.spacing or (0.0, 0.0)
        return {"plan_spacing_y": float(sy), "plan_spacing_x": float(sx),
                "plan_size": plan.size, "plan_norm": NORM_CODES[plan.norm]}

    @classmethod
    def reason(cls, name: str, data: dict[str, Any]) -> str:
        return "no validation score (no validation case)" if name == "val_dice" else (
            super().reason(name, data))

    def plan_text(self) -> str:
        """``"0.75x0.75 mm, 64 px, mri"`` or ``"no plan"``."""
        if not self.plan_size:
            return "no plan"
        sp = (f"{self.plan_spacing_y:g}x{self.plan_spacing_x:g} mm" if self.plan_spacing_y
              else "fit")
        norm = {v: k for k, v in NORM_CODES.items()}.get(self.plan_norm, "?")
        return f"{sp}, {self.plan_size} px, {norm}"


class QueryConfig(StrictModel):
    """``query.teacher_outputs`` request: one chunk of proxy slices and how to compute maps."""

    run_id: RunId
    chunk: int = Field(ge=0)
    n_chunks: int = Field(ge=1, le=1_000_000)
    size: int = Field(ge=16, le=MAX_QUERY_SIDE)
    at_form: Literal["zagoruyko", "paper"] = "zagoruyko"
    p: int = Field(default=2, ge=1, le=8)
    batch_size: int = Field(default=16, ge=1, le=4096)
    temperature: float = Field(default=1.0, gt=0.0, le=100.0)  # the student's KD temperature
    whole_field: bool = False  # tile fields wider than the teacher's canvas (plan_bridge)
    slice_hashes: list[str] = Field(max_length=MAX_QUERY_SLICES)
    plan_json: str = Field(default="", max_length=4096)
    """The query grid: the student's :class:`common.data.plan.Plan` as JSON. The
    slices are the proxy prepared with it: canonical ``(z, y, x)`` slices resampled in-plane
    to ``spacing`` ``(sy, sx)`` mm, centre cropped / padded to ``size`` (= this config's
    ``size``), normalised as ``norm`` says (``mri``: per-volume percentile clip and z-score;
    ``ct``: clip to ``ct_clip``, then ``(x - ct_mean) / ct_std``). Each site maps them to its
    teacher's own plan and answers on this grid (:mod:`common.kd.plan_bridge`). ``""``: no
    stated geometry; the teacher gets the slices as they are."""

    @field_validator("plan_json")
    @classmethod
    def _plan_parses(cls, v: str) -> str:
        from common.data.plan import Plan

        try:
            if v:
                Plan.model_validate_json(v)
        except ValidationError as exc:
            where, msg = first_error(exc)
            raise ValueError(f"not a Plan ({where}: {msg})") from None
        return v

    @model_validator(mode="after")
    def _chunk_in_range(self) -> QueryConfig:
        if self.chunk >= self.n_chunks:
            raise ValueError(f"chunk {self.chunk} out of range for {self.n_chunks} chunks")
        plan = self.plan()
        if plan is not None and plan.size != self.size:
            raise ValueError(f"plan_json size {plan.size} != query size {self.size}")
        return self

    def plan(self) -> Plan | None:
        """The decoded query-grid plan, or None."""
        from common.data.plan import Plan

        return Plan.model_validate_json(self.plan_json) if self.plan_json else None


class QueryEcho(StrictModel):
    """``query.teacher_outputs`` reply header: which chunk this answers, how logits are encoded
    (``common.compress.CompressionConfig`` fields, flattened; the site's ``compression``)."""

    run_id: RunId
    chunk: int = Field(ge=0)
    n: int = Field(ge=0, le=100_000)
    compression: Literal["fp32", "fp16", "int8_probs", "downsample"] = "fp16"
    downsample_factor: Literal[2, 4] = 2
    int8_classes: Literal["foreground", "all"] = "foreground"
    temperature: float = Field(default=1.0, gt=0.0, le=100.0)
    noise_sigma: float = Field(default=0.0, ge=0.0, le=1e6)
    noise_on: Literal["probs", "logits"] = "probs"
    at_form: Literal["zagoruyko", "paper"] = "zagoruyko"  # unit-L2 maps or not (DP accounting)

    def codec(self) -> CompressionConfig:
        """The compression config this reply was encoded with."""
        from common.compress import CompressionConfig

        return CompressionConfig(mode=self.compression, downsample_factor=self.downsample_factor,
                                 int8_classes=self.int8_classes, temperature=self.temperature,
                                 noise_sigma=self.noise_sigma, noise_on=self.noise_on)


class EvalConfig(StrictModel):
    """``evaluate`` request: the student's architecture (weights travel as an ArrayRecord)."""

    run_id: RunId
    run_name: RunName
    model_name: str = Field(max_length=MAX_NAME_LEN)
    size: int = Field(ge=16, le=1024)
    plan_json: str = Field(default="", max_length=4096)
    """The student's preprocessing plan (:class:`common.data.plan.Plan` as JSON): the site
    prepares its test cases with it (its own target labels are kept), so the student is scored
    on the grid it was trained for. ``""``: the site's own teacher plan."""
    local_bn: int | None = Field(default=None, ge=0, le=2**31 - 1)
    """FedBN rows: the seed of the FedBN run whose BatchNorm state this site kept
    (:mod:`common.fedbn`, under ``run_id``); the weights sent lack the BatchNorm entries and the
    site scores with its own. ``None``: the weights are the whole model."""

    @field_validator("plan_json")
    @classmethod
    def _plan_parses(cls, v: str) -> str:
        if v:
            from common.data.plan import Plan

            Plan.model_validate_json(v)
        return v

    def plan(self) -> Plan | None:
        """The decoded student plan, or None."""
        from common.data.plan import Plan

        return Plan.model_validate_json(self.plan_json) if self.plan_json else None


CASE_KEY = r"^case[0-9]{3,5}$"  # pseudonymous test case key: index in the test split's order
CASE_METRICS = ("dice", "voe", "hd95")


class CaseScore(StrictModel):
    """One test case's 3D scores; null when undefined (HD95: empty prediction or truth)."""

    dice: float | None = Field(default=None, ge=0.0, le=1.0)
    voe: float | None = Field(default=None, ge=0.0, le=1.0)
    hd95: float | None = Field(default=None, ge=0.0, le=1e6)


class EvalReply(MetricsReply):
    """``evaluate`` reply: 3D metric summaries over the site's private test cases; an undefined
    summary is null with a reason (:class:`MetricsReply`). ``cases`` (optional, not part of
    :meth:`metrics`): each test case's scores keyed ``case000``, ``case001``, ... in the test
    split's order (never file names), for paired statistics; sent in the ``cases`` record."""

    cases: dict[Annotated[str, Field(pattern=CASE_KEY)], CaseScore] = Field(
        default_factory=dict, max_length=10_000, exclude=True)

    def case_scores(self) -> dict[str, dict[str, float]]:
        """``{case key: {"dice", "voe", "hd95"}}`` (an undefined score is NaN)."""
        return {k: {m: math.nan if v is None else v for m, v in c.model_dump().items()}
                for k, c in self.cases.items()}

    dice_mean: float | None = None
    dice_std: float | None = None
    voe_mean: float | None = None
    voe_std: float | None = None
    hd95_mean: float | None = None
    hd95_std: float | None = None
    hd95_undefined: float
    n: float

    @classmethod
    def reason(cls, name: str, data: dict[str, Any]) -> str:
        n, bad = data.get("n"), data.get("hd95_undefined")
        if n == 0:
            return "no test case"
        if name.startswith("hd95") and isinstance(n, float | int) and isinstance(bad, float | int):
            return (f"HD95 undefined in {bad:g} of {n:g} test cases (empty prediction or "
                    "ground truth)")
        if name.startswith("hd95"):
            return "HD95 undefined (empty prediction or ground truth)"
        return super().reason(name, data)
