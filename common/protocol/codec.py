"""The ``encode_*`` / ``decode_*`` functions of every message (requests and replies).

Part of :mod:`common.protocol`; ``flwr`` and ``torch`` are imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from common.protocol.messages import (
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
