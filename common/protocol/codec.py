"""The ``encode_*`` / ``decode_*`` functions of every message (requests and replies).

Part of :mod:`common.protocol`; ``flwr`` and ``torch`` are imported inside the functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import numpy as np
from pydantic import Field, model_validator

from common.config import StrictModel
from common.protocol.messages import (
    CASE_METRICS,
    FEATURE_KEYS,
    EvalConfig,
    EvalReply,
    Key,
    MetricsReply,
    ProtocolError,
    QueryConfig,
    QueryEcho,
    SiteInfo,
    TrainConfig,
    TrainReply,
)
from common.protocol.schemas import (
    NUM_CLASSES,
    check_records,
    decode_arrays,
    decode_model,
    query_schema,
    reply_schema,
    slice_hash,
)
from common.teacher_fields import AT_FIELDS, SCALAR_FIELDS

if TYPE_CHECKING:
    import torch
    from flwr.app import ArrayRecord, RecordDict

    from common.compress import CompressionConfig
    from common.kd.targets import TeacherTargets


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
    # whole_field travels only when set: a site of an earlier version still reads the rest
    fields = cfg.model_dump(exclude=None if cfg.whole_field else {"whole_field"})
    return RecordDict({Key.CONFIG: ConfigRecord(fields), Key.ARRAYS: _array_record(arrays)})


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
    site_arrays = t.site_arrays()  # {field: (B, ...)}, common.teacher_fields
    arrays = compress_logits(site_arrays[Key.LOGITS], codec, rng)
    feats: dict[str, np.ndarray] = {str(k): site_arrays[k] for k in FEATURE_KEYS}
    if codec.noise_sigma > 0:
        from common.compress import noise_features

        feats = noise_features({k: feats[k] for k in AT_FIELDS},
                               {k: feats[k] for k in SCALAR_FIELDS}, codec.noise_sigma, rng)
    for key, (dtype, _) in reply_schema(t.batch_size, cfg.size).items():
        if key != Key.LOGITS:
            arrays[key] = feats[key].astype(dtype)
    flat = codec.model_dump()
    echo = QueryEcho(run_id=cfg.run_id, chunk=cfg.chunk, n=t.batch_size, at_form=cfg.at_form,
                     compression=flat.pop("mode"), **flat)
    return RecordDict({Key.SITE: _site_record(site), Key.CONFIG: ConfigRecord(echo.model_dump()),
                       Key.ARRAYS: _array_record(arrays)})


def decode_teacher_arrays(rd: RecordDict, n: int, size: int, who: str,
                          chunk: int | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """Coordinator side: ``(site name, site arrays)`` for ``n`` slices: ``{field: (n, ...)}``
    in field order (:mod:`common.teacher_fields`), each as the wire carried it (fp16 maps,
    fp32 scalars, fp16 / fp32 logits) except logits under a lossy codec (``int8_probs``,
    ``downsample``), decoded to float32 logits; checked (schema, shapes, finiteness)."""
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
    logits = wire[Key.LOGITS] if set(wire) == {Key.LOGITS} else \
        decompress_logits(wire, codec, size, NUM_CLASSES)
    return site, {str(Key.LOGITS): logits, **{str(k): arrays[k] for k in FEATURE_KEYS}}


def decode_teacher_reply(rd: RecordDict, n: int, size: int, who: str,
                         chunk: int | None = None) -> tuple[str, TeacherTargets]:
    """:func:`decode_teacher_arrays` as ``(site name, TeacherTargets with J = 1, float32)``."""
    from common.kd.targets import TeacherTargets

    site, arrays = decode_teacher_arrays(rd, n, size, who, chunk)
    return site, TeacherTargets.from_site_arrays(arrays)


# ----------------------------------------------------------------------------- evaluate
MAX_TENSORS = 100_000  # tensors in one packed state dict
PACKED_KINDS = "fiu"  # numpy dtype kinds a student tensor may have


class Layout(StrictModel):
    """The ``layout`` ConfigRecord of an ``evaluate`` request: the student's tensors in
    ``state_dict`` order, each with its dtype and shape (``ndims[i]`` entries of ``dims``).
    The values of all tensors of one dtype travel as ONE flat array named after the dtype in
    the ``student`` ArrayRecord (Flower ships an array record of 618 tensors as ~1,000
    objects; packed, it is one per dtype)."""

    names: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        max_length=MAX_TENSORS)
    dtypes: list[str] = Field(max_length=MAX_TENSORS)
    ndims: list[Annotated[int, Field(ge=0, le=8)]] = Field(max_length=MAX_TENSORS)
    dims: list[Annotated[int, Field(ge=0, le=2**31)]] = Field(max_length=8 * MAX_TENSORS)

    @model_validator(mode="after")
    def _consistent(self) -> Layout:
        if not len(self.names) == len(self.dtypes) == len(self.ndims):
            raise ValueError("names, dtypes and ndims differ in length")
        if len(set(self.names)) != len(self.names):
            raise ValueError("duplicate tensor names")
        if sum(self.ndims) != len(self.dims):
            raise ValueError(f"ndims add up to {sum(self.ndims)}, dims has {len(self.dims)}")
        return self

    def shapes(self) -> list[tuple[int, ...]]:
        """Each tensor's shape, in order."""
        out, at = [], 0
        for nd in self.ndims:
            out.append(tuple(self.dims[at:at + nd]))
            at += nd
        return out


def pack_state(state: dict[str, torch.Tensor]) -> tuple[Layout, dict[str, np.ndarray]]:
    """``state`` -> ``(layout, {dtype name: flat 1-D array})``: every tensor's C-order values,
    concatenated per dtype in ``state`` order (bit-identical; no conversion)."""
    arrays = {k: v.detach().cpu().contiguous().numpy() for k, v in state.items()}
    groups: dict[str, list[np.ndarray]] = {}
    for name, a in arrays.items():
        if a.dtype.kind not in PACKED_KINDS:
            raise ProtocolError(f"student tensor {name!r}: unsupported dtype {a.dtype}")
        groups.setdefault(str(a.dtype), []).append(a.reshape(-1))
    layout = Layout(names=list(arrays), dtypes=[str(a.dtype) for a in arrays.values()],
                    ndims=[a.ndim for a in arrays.values()],
                    dims=[int(d) for a in arrays.values() for d in a.shape])
    return layout, {dt: np.concatenate(parts) for dt, parts in groups.items()}


def unpack_state(layout: Layout, flat: dict[str, np.ndarray], who: str
                 ) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_state`; each flat array must hold exactly its tensors' values."""
    import torch

    if set(flat) != set(layout.dtypes):
        raise ProtocolError(f"{who}: student arrays {sorted(flat)} do not match the layout's "
                            f"dtypes {sorted(set(layout.dtypes))}")
    offsets = dict.fromkeys(flat, 0)
    state: dict[str, torch.Tensor] = {}
    for name, dt, shape in zip(layout.names, layout.dtypes, layout.shapes(), strict=True):
        n = math.prod(shape)  # Python ints: no overflow
        at = offsets[dt]
        if at + n > flat[dt].size:
            raise ProtocolError(f"{who}: student array {dt!r} too short for {name!r}")
        state[name] = torch.from_numpy(flat[dt][at:at + n].reshape(shape))
        offsets[dt] = at + n
    short = [dt for dt, a in flat.items() if offsets[dt] != a.size]
    if short:
        raise ProtocolError(f"{who}: student array {short[0]!r} longer than its tensors")
    return state


LAYOUT_PREFIX = "layout-"  # a Layout's fields inside another config record (FedAvg)


def pack_weights(state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], ArrayRecord]:
    """Model weights packed for a message whose ``config`` record has other fields too (the
    FedAvg baseline): ``(layout fields "layout-names", ... for that record, ArrayRecord with
    one flat array per dtype)``."""
    layout, flat = pack_state(state)
    fields = {LAYOUT_PREFIX + k: v for k, v in layout.model_dump().items()}
    return fields, _array_record(flat)


def without_layout(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without the ``layout-*`` fields of :func:`pack_weights`."""
    return {k: v for k, v in config.items() if not str(k).startswith(LAYOUT_PREFIX)}


def unpack_weights(config: Mapping[str, Any], arrays: ArrayRecord, who: str
                   ) -> tuple[dict[str, torch.Tensor], Layout | None]:
    """Inverse of :func:`pack_weights`: ``(state_dict, layout)``; a message without
    ``layout-*`` fields carries one array per tensor (``(state_dict, None)``). A flat array
    is cast to its dtype first (Flower's FedAvg average turns integer arrays into float64)."""
    fields = {str(k)[len(LAYOUT_PREFIX):]: v for k, v in config.items()
              if str(k).startswith(LAYOUT_PREFIX)}
    if not fields:
        return arrays.to_torch_state_dict(), None
    layout = decode_model(fields, Layout, who, Key.CONFIG)
    flat: dict[str, np.ndarray] = {}
    for key, arr in arrays.items():
        a = arr.numpy() if arr.stype == "numpy.ndarray" else None
        if a is None or key not in layout.dtypes or a.ndim != 1 or a.dtype.kind not in "fiu":
            raise ProtocolError(f"{who}: weights array {key!r}: expected a 1-D array of one "
                                f"of the layout's dtypes {sorted(set(layout.dtypes))}")
        flat[key] = a.astype(key)  # a copy: writable, owned
    return unpack_state(layout, flat, who), layout


def encode_eval(cfg: EvalConfig, state: dict[str, torch.Tensor]) -> RecordDict:
    """``evaluate`` request carrying the student's ``state_dict`` packed (:func:`pack_state`):
    ``config``, ``layout`` (ConfigRecords) and ``student`` (one flat array per dtype)."""
    from flwr.app import ConfigRecord, RecordDict

    layout, flat = pack_state(state)
    return RecordDict({Key.CONFIG: ConfigRecord(cfg.model_dump(exclude_none=True)),
                       Key.LAYOUT: ConfigRecord(layout.model_dump()),  # type: ignore[arg-type]
                       Key.STUDENT: _array_record(flat)})


def decode_eval(rd: RecordDict, who: str = "coordinator"
                ) -> tuple[EvalConfig, dict[str, torch.Tensor]]:
    """Site side: ``(config, state_dict)``, bit-identical to what was encoded; load it with
    ``strict=True`` to check the keys."""
    check_records(rd, {Key.CONFIG: "ConfigRecord", Key.LAYOUT: "ConfigRecord",
                       Key.STUDENT: "ArrayRecord"}, who)
    cfg = decode_model(rd[Key.CONFIG], EvalConfig, who, Key.CONFIG)
    layout = decode_model(rd[Key.LAYOUT], Layout, who, Key.LAYOUT)
    flat: dict[str, np.ndarray] = {}
    for key, arr in cast("ArrayRecord", rd[Key.STUDENT]).items():
        a = arr.numpy() if arr.stype == "numpy.ndarray" else None
        if a is None or a.ndim != 1 or str(a.dtype) != key or a.dtype.kind not in PACKED_KINDS:
            raise ProtocolError(f"{who}: student array {key!r}: expected a 1-D {key} array, "
                                f"got {arr.dtype} {tuple(arr.shape)}")
        flat[key] = a.copy()  # writable, owned: the tensors are views of it
    return cfg, unpack_state(layout, flat, who)


def encode_eval_reply(site: str, reply: EvalReply) -> RecordDict:
    """``evaluate`` reply: metric summaries and, when the reply has them, the per-case scores
    as a ``cases`` MetricRecord (``case000.dice``, ...; an undefined HD95 is left out)."""
    from flwr.app import MetricRecord

    rd = _encode_metrics_reply(site, reply)
    if reply.cases:
        rd[Key.CASES] = MetricRecord({f"{k}.{m}": v for k, c in reply.cases.items()
                                      for m, v in c.model_dump().items() if v is not None})
    return rd


def _decode_cases(rec: Any, who: str) -> dict[str, dict[str, float]]:
    cases: dict[str, dict[str, float]] = {}
    for key, value in dict(rec).items():
        case, _, metric = str(key).partition(".")
        if metric not in CASE_METRICS:
            raise ProtocolError(f"{who}: record 'cases': unexpected key {key!r}")
        cases.setdefault(case, {})[metric] = value
    return cases


def decode_eval_reply(rd: RecordDict, who: str) -> tuple[str, EvalReply]:
    """Coordinator side: ``(site name, EvalReply)`` (with ``cases`` when the site sent them)."""
    if Key.CASES not in rd.keys():
        return _decode_metrics_reply(rd, who, EvalReply)
    from flwr.app import RecordDict

    rec = rd[Key.CASES]
    if type(rec).__name__ != "MetricRecord":
        raise ProtocolError(f"{who}: record 'cases' must be a MetricRecord")
    rest = RecordDict({k: v for k, v in rd.items() if k != Key.CASES})
    site, rep = _decode_metrics_reply(rest, who, EvalReply)
    values = {**rep.model_dump(), "cases": _decode_cases(rec, who)}
    return site, decode_model(values, EvalReply, f"{who} ({site})", Key.CASES)


def eval_scores(reply: EvalReply) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """``(summary, {case key: {"dice", "voe", "hd95"}})`` of an evaluate reply: the summary as
    :meth:`MetricsReply.summary` (NaN for undefined), the per-case scores ({} when the site
    sent none; an undefined HD95 is NaN)."""
    return reply.summary(), reply.case_scores()
