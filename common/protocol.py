"""Wire schema of the federated transport (Flower Message API), validated on both sides.

Every message is a Flower ``RecordDict`` with a fixed set of record keys (:class:`Key`):

=================  ==========================================  ==============================
message type       request records                             reply records
=================  ==========================================  ==============================
``train``          config: TrainConfig                         site: SiteInfo, metrics:
                                                               TrainReply (NO arrays: a site
                                                               never sends weights)
``query.teacher_   config: QueryConfig, arrays: images float32 site: SiteInfo, config:
outputs``          (N,1,S,S), masks uint8 (N,S,S)              QueryEcho, arrays: logits fp16
                                                               (or probs_u8 / logits_ds: the
                                                               site's ``compression``)
                                                               (N,2,S,S), at_early fp16
                                                               (N,S/2,S/2), at_deep fp16
                                                               (N,S/8,S/8), rc_early/rc_deep
                                                               float32 (N,)
``evaluate``       config: EvalConfig, student: state_dict     site: SiteInfo, metrics:
                                                               EvalReply
=================  ==========================================  ==============================

Every reply may also carry ``receipt`` (ConfigRecord of strings): the site's signed receipt of
the exchange-log entry covering exactly this reply (``common.audit.make_receipt``); the
coordinator checks it with ``common.audit.receipt_problem`` before decoding.

Any unexpected record or array key, wrong record type, dtype, shape, non-finite value or
invalid config field raises :class:`ProtocolError` with one line naming the peer and the key.
``flwr`` and ``torch`` are imported inside functions so that importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import math
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from common.config import MAX_NAME_LEN, RunId, RunName, SafeName, StrictModel

if TYPE_CHECKING:
    import torch
    from flwr.app import ArrayRecord, RecordDict

    from common.compress import CompressionConfig
    from common.data.plan import Plan
    from common.kd.targets import TeacherTargets

NUM_CLASSES = 2
M = TypeVar("M", bound=BaseModel)


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


FEATURE_KEYS = (Key.AT_EARLY, Key.AT_DEEP, Key.RC_EARLY, Key.RC_DEEP)  # teacher outputs but logits

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
    its plan's aggregate facts (issue 17): in-plane spacing ``plan_spacing_y/x`` mm (0: the
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
    size: int = Field(ge=16, le=1024)
    at_form: Literal["zagoruyko", "paper"] = "zagoruyko"
    p: int = Field(default=2, ge=1, le=8)
    batch_size: int = Field(default=16, ge=1, le=4096)
    temperature: float = Field(default=1.0, gt=0.0, le=100.0)  # the student's KD temperature
    slice_hashes: list[str] = Field(max_length=100_000)
    plan_json: str = Field(default="", max_length=4096)
    """The query grid (issue 17): the student's :class:`common.data.plan.Plan` as JSON. The
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
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"not a Plan ({where}: {err['msg']})") from None
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


class EvalReply(MetricsReply):
    """``evaluate`` reply: 3D metric summaries over the site's private test cases; an undefined
    summary is null with a reason (:class:`MetricsReply`)."""

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


# ----------------------------------------------------------------------------- tensor schemas
def query_schema(n: int, size: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Request arrays of a query with ``n`` slices of side ``size``: key -> (dtype, shape)."""
    return {str(Key.IMAGES): ("float32", (n, 1, size, size)),
            str(Key.MASKS): ("uint8", (n, size, size))}


def reply_schema(n: int, size: int, codec: CompressionConfig | None = None
                 ) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Reply arrays of a teacher answer for ``n`` slices of side ``size`` (logits as ``codec``
    encodes them: default fp16 ``logits``; ``probs_u8`` or ``logits_ds`` otherwise)."""
    from common.compress import CompressionConfig, payload_schema

    return {
        **payload_schema(codec or CompressionConfig(), n, size, NUM_CLASSES),
        str(Key.AT_EARLY): ("float16", (n, size // 2, size // 2)),
        str(Key.AT_DEEP): ("float16", (n, size // 8, size // 8)),
        str(Key.RC_EARLY): ("float32", (n,)),
        str(Key.RC_DEEP): ("float32", (n,)),
    }


def slice_hash(image: np.ndarray) -> str:
    """sha256 of one slice's float32 bytes (C order); the proxy set's hashes use it too."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()


# ----------------------------------------------------------------------------- validation
def check_records(rd: RecordDict, expected: dict[str, str], who: str,
                  receipt: bool = False) -> None:
    """``rd`` must hold exactly the record keys of ``expected`` (key -> record class name).

    ``receipt``: a reply may also carry the site's signed ``receipt`` ConfigRecord.
    """
    expected = {str(k): v for k, v in expected.items()}
    if receipt and Key.RECEIPT in rd.keys():
        expected[str(Key.RECEIPT)] = "ConfigRecord"
    keys = set(rd.keys())
    if keys != set(expected):
        extra, missing = sorted(keys - set(expected)), sorted(set(expected) - keys)
        raise ProtocolError(f"{who}: record keys {sorted(keys)}: unexpected {extra}, "
                            f"missing {missing}")
    for key, cls in expected.items():
        if type(rd[key]).__name__ != cls:
            raise ProtocolError(f"{who}: record {key!r} is {type(rd[key]).__name__}, "
                                f"expected {cls}")


def decode_model(record: Any, model: type[M], who: str, key: str) -> M:
    """Validate a ConfigRecord / MetricRecord as ``model`` (unknown fields refused)."""
    try:
        return model.model_validate(dict(record))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ProtocolError(f"{who}: record {str(key)!r}: field {loc}: {err['msg']}") from None


def decode_arrays(rec: ArrayRecord, schema: dict[str, tuple[str, tuple[int, ...]]], who: str,
                  finite: bool = True) -> dict[str, np.ndarray]:
    """Arrays of ``rec`` checked against ``schema`` (exact keys, dtype, shape, finiteness)."""
    keys = set(rec.keys())
    if keys != set(schema):
        raise ProtocolError(f"{who}: array keys {sorted(keys)}: unexpected "
                            f"{sorted(keys - set(schema))}, missing {sorted(set(schema) - keys)}")
    out = {}
    for key, (dtype, shape) in schema.items():
        arr = rec[key].numpy() if rec[key].stype == "numpy.ndarray" else None
        if arr is None or str(arr.dtype) != dtype or rec[key].dtype != dtype:
            got = rec[key].dtype if arr is None else arr.dtype
            raise ProtocolError(f"{who}: array {key!r}: dtype {got}, expected {dtype}")
        if tuple(arr.shape) != shape:
            raise ProtocolError(f"{who}: array {key!r}: shape {tuple(arr.shape)}, expected {shape}")
        if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ProtocolError(f"{who}: array {key!r}: non-finite values")
        out[key] = arr
    return out


def _array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _site_record(site: str) -> Any:
    from flwr.app import ConfigRecord

    return ConfigRecord(SiteInfo(site_name=site).model_dump())


# ----------------------------------------------------------------------------- train
def encode_train(cfg: TrainConfig) -> RecordDict:
    """``train`` request."""
    from flwr.app import ConfigRecord, RecordDict

    return RecordDict({Key.CONFIG: ConfigRecord(cfg.model_dump())})


def decode_train(rd: RecordDict, who: str = "coordinator") -> TrainConfig:
    """Site side: validate a ``train`` request."""
    check_records(rd, {Key.CONFIG: "ConfigRecord"}, who)
    return decode_model(rd[Key.CONFIG], TrainConfig, who, Key.CONFIG)


def _encode_metrics_reply(site: str, reply: MetricsReply) -> RecordDict:
    """A metrics-only reply: the site record, one MetricRecord of the defined metrics and,
    when some are undefined, the ``undefined`` ConfigRecord of reasons; never an array."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    records: dict[str, Any] = {Key.SITE: _site_record(site),
                               Key.METRICS: MetricRecord(reply.metrics())}
    if reply.undefined:
        records[Key.UNDEFINED] = ConfigRecord(dict(reply.undefined))
    return RecordDict(records)


MR = TypeVar("MR", bound=MetricsReply)


def _decode_metrics_reply(rd: RecordDict, who: str, model: type[MR]) -> tuple[str, MR]:
    """Coordinator side of a metrics-only reply: ``(site name, model)``; arrays are refused."""
    expected: dict[str, str] = {Key.SITE: "ConfigRecord", Key.METRICS: "MetricRecord"}
    if Key.UNDEFINED in rd.keys():
        expected[Key.UNDEFINED] = "ConfigRecord"
    check_records(rd, expected, who, receipt=True)
    site = decode_model(rd[Key.SITE], SiteInfo, who, Key.SITE).site_name
    values: dict[str, Any] = dict(rd[Key.METRICS])
    if Key.UNDEFINED in rd.keys():
        values["undefined"] = dict(rd[Key.UNDEFINED])
    return site, decode_model(values, model, f"{who} ({site})", Key.METRICS)


def encode_train_reply(site: str, reply: TrainReply) -> RecordDict:
    """``train`` reply: metrics only."""
    return _encode_metrics_reply(site, reply)


def decode_train_reply(rd: RecordDict, who: str) -> tuple[str, TrainReply]:
    """Coordinator side: ``(site name, TrainReply)``; any array (weights) is refused."""
    return _decode_metrics_reply(rd, who, TrainReply)


# ----------------------------------------------------------------------------- query
def encode_query(images: np.ndarray, masks: np.ndarray, cfg: QueryConfig) -> RecordDict:
    """``query.teacher_outputs`` request for proxy ``images (N,1,S,S)``, ``masks (N,S,S)``."""
    from flwr.app import ConfigRecord, RecordDict

    arrays: dict[str, np.ndarray] = {Key.IMAGES: images.astype(np.float32),
                                     Key.MASKS: masks.astype(np.uint8)}
    decode_arrays(_array_record(arrays), query_schema(len(images), cfg.size), "encode_query")
    return RecordDict({Key.CONFIG: ConfigRecord(cfg.model_dump()),
                       Key.ARRAYS: _array_record(arrays)})


def decode_query(rd: RecordDict, who: str = "coordinator"
                 ) -> tuple[QueryConfig, np.ndarray, np.ndarray]:
    """Site side: ``(config, images (N,1,S,S) float32, masks (N,S,S) uint8)``, hashes checked."""
    check_records(rd, {Key.CONFIG: "ConfigRecord", Key.ARRAYS: "ArrayRecord"}, who)
    cfg = decode_model(rd[Key.CONFIG], QueryConfig, who, Key.CONFIG)
    n = len(cfg.slice_hashes)
    arrays = decode_arrays(cast("ArrayRecord", rd[Key.ARRAYS]), query_schema(n, cfg.size), who)
    images = arrays[Key.IMAGES]
    if [slice_hash(im) for im in images] != cfg.slice_hashes:
        raise ProtocolError(f"{who}: array 'images': content does not match slice_hashes")
    return cfg, images, arrays[Key.MASKS]


def encode_teacher_reply(site: str, cfg: QueryConfig, t: TeacherTargets,
                         codec: CompressionConfig | None = None,
                         rng: np.random.Generator | None = None) -> RecordDict:
    """Site side: one teacher's (J = 1) targets: logits encoded by ``codec`` (default fp16),
    attention maps fp16, scalars fp32. ``rng`` draws the noise (default: OS entropy)."""
    from flwr.app import ConfigRecord, RecordDict

    from common.compress import CompressionConfig, compress_logits

    if t.num_teachers != 1:
        raise ProtocolError(f"{site}: a site answers for exactly one teacher, got {t.num_teachers}")
    codec = codec or CompressionConfig()
    arrays = compress_logits(t.logits[0].detach().cpu().numpy(), codec, rng)
    feats: dict[str, np.ndarray] = {str(k): getattr(t, k)[0].detach().cpu().numpy()
                                    for k in FEATURE_KEYS}
    if codec.noise_sigma > 0:
        from common.compress import noise_features

        feats = noise_features({k: feats[k] for k in (Key.AT_EARLY, Key.AT_DEEP)},
                               {k: feats[k] for k in (Key.RC_EARLY, Key.RC_DEEP)},
                               codec.noise_sigma, rng)
    for key, (dtype, _) in reply_schema(t.batch_size, cfg.size).items():
        if key != Key.LOGITS:
            arrays[key] = feats[key].astype(dtype)
    flat = codec.model_dump()
    echo = QueryEcho(run_id=cfg.run_id, chunk=cfg.chunk, n=t.batch_size, at_form=cfg.at_form,
                     compression=flat.pop("mode"), **flat)
    return RecordDict({Key.SITE: _site_record(site), Key.CONFIG: ConfigRecord(echo.model_dump()),
                       Key.ARRAYS: _array_record(arrays)})


def decode_teacher_reply(rd: RecordDict, n: int, size: int, who: str,
                         chunk: int | None = None) -> tuple[str, TeacherTargets]:
    """Coordinator side: ``(site name, TeacherTargets with J = 1, float32)`` for ``n`` slices."""
    import torch

    from common.kd.targets import TeacherTargets

    recs: dict[str, str] = {Key.SITE: "ConfigRecord", Key.CONFIG: "ConfigRecord",
                            Key.ARRAYS: "ArrayRecord"}
    check_records(rd, recs, who, receipt=True)
    site = decode_model(rd[Key.SITE], SiteInfo, who, Key.SITE).site_name
    who = f"{who} ({site})"
    echo = decode_model(rd[Key.CONFIG], QueryEcho, who, Key.CONFIG)
    if echo.n != n or (chunk is not None and echo.chunk != chunk):
        raise ProtocolError(f"{who}: record 'config': answers chunk {echo.chunk} with "
                            f"{echo.n} slices, expected chunk {chunk} with {n}")
    codec = echo.codec()
    arrays = decode_arrays(cast("ArrayRecord", rd[Key.ARRAYS]), reply_schema(n, size, codec),
                           who)
    from common.compress import decompress_logits, payload_schema

    wire = {k: arrays.pop(k) for k in payload_schema(codec, n, size, NUM_CLASSES)}
    arrays[Key.LOGITS] = decompress_logits(wire, codec, size, NUM_CLASSES)
    fields = {k: torch.from_numpy(v.astype(np.float32))[None] for k, v in arrays.items()}
    return site, TeacherTargets(**fields)


# ----------------------------------------------------------------------------- evaluate
def encode_eval(cfg: EvalConfig, state: dict[str, torch.Tensor]) -> RecordDict:
    """``evaluate`` request carrying the student's ``state_dict``."""
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return RecordDict({Key.CONFIG: ConfigRecord(cfg.model_dump()),
                       Key.STUDENT: ArrayRecord(state)})


def decode_eval(rd: RecordDict, who: str = "coordinator"
                ) -> tuple[EvalConfig, dict[str, torch.Tensor]]:
    """Site side: ``(config, state_dict)``; load it with ``strict=True`` to check the keys."""
    check_records(rd, {Key.CONFIG: "ConfigRecord", Key.STUDENT: "ArrayRecord"}, who)
    cfg = decode_model(rd[Key.CONFIG], EvalConfig, who, Key.CONFIG)
    state = {}
    for key, arr in cast("ArrayRecord", rd[Key.STUDENT]).items():
        a = arr.numpy() if arr.stype == "numpy.ndarray" else None
        if a is None or a.dtype.kind not in "fiu":
            raise ProtocolError(f"{who}: student array {key!r}: unsupported dtype {arr.dtype}")
        import torch

        state[key] = torch.from_numpy(a.copy())
    return cfg, state


def encode_eval_reply(site: str, reply: EvalReply) -> RecordDict:
    """``evaluate`` reply: metric summaries only."""
    return _encode_metrics_reply(site, reply)


def decode_eval_reply(rd: RecordDict, who: str) -> tuple[str, EvalReply]:
    """Coordinator side: ``(site name, EvalReply)``."""
    return _decode_metrics_reply(rd, who, EvalReply)
