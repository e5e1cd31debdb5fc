"""Tensor schemas (array key -> dtype, shape), ``slice_hash`` and the validators that check
records, config models and arrays against them (raising :class:`ProtocolError`).

Part of :mod:`common.protocol`.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from common.config import first_error
from common.protocol.messages import FEATURE_KEYS, Key, LogHead, ProtocolError
from common.teacher_fields import STORED_DTYPE, slice_shapes

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, RecordDict

    from common.compress import CompressionConfig

NUM_CLASSES = 2
M = TypeVar("M", bound=BaseModel)


# ----------------------------------------------------------------------------- tensor schemas
def query_schema(n: int, size: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Request arrays of a query with ``n`` slices of side ``size``: key -> (dtype, shape)."""
    return {str(Key.IMAGES): ("float32", (n, 1, size, size)),
            str(Key.MASKS): ("uint8", (n, size, size))}


def reply_schema(n: int, size: int, codec: CompressionConfig | None = None
                 ) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Reply arrays of a teacher answer for ``n`` slices of side ``size`` (logits as ``codec``
    encodes them: default fp16 ``logits``; ``probs_u8`` or ``logits_ds`` otherwise; the other
    fields as :mod:`common.teacher_fields` stores them, EMKD taps)."""
    from common.compress import CompressionConfig, payload_schema

    shapes = slice_shapes(size, NUM_CLASSES)
    return {**payload_schema(codec or CompressionConfig(), n, size, NUM_CLASSES),
            **{str(k): (STORED_DTYPE[k], (n, *shapes[k])) for k in FEATURE_KEYS}}


def slice_hash(image: np.ndarray) -> str:
    """sha256 of one slice's float32 bytes (C order); the proxy set's hashes use it too."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()


# ----------------------------------------------------------------------------- validation
def check_records(rd: RecordDict, expected: dict[str, str], who: str,
                  receipt: bool = False) -> None:
    """``rd`` must hold exactly the record keys of ``expected`` (key -> record class name).

    ``receipt``: a reply may also carry the site's signed ``receipt`` ConfigRecord. Any
    message may carry the sender's signed log ``head`` (ConfigRecord, validated as
    :class:`~common.protocol.messages.LogHead`; its signature is checked by the receiving
    side's log, :mod:`common.audit.anchor`).
    """
    expected = {str(k): v for k, v in expected.items()}
    if receipt and Key.RECEIPT in rd.keys():
        expected[str(Key.RECEIPT)] = "ConfigRecord"
    if Key.HEAD in rd.keys():
        expected[str(Key.HEAD)] = "ConfigRecord"
    keys = set(rd.keys())
    if keys != set(expected):
        extra, missing = sorted(keys - set(expected)), sorted(set(expected) - keys)
        raise ProtocolError(f"{who}: record keys {sorted(keys)}: unexpected {extra}, "
                            f"missing {missing}")
    for key, cls in expected.items():
        if type(rd[key]).__name__ != cls:
            raise ProtocolError(f"{who}: record {key!r} is {type(rd[key]).__name__}, "
                                f"expected {cls}")
    if Key.HEAD in rd.keys():
        decode_model(rd[Key.HEAD], LogHead, who, Key.HEAD)


def decode_model(record: Any, model: type[M], who: str, key: str) -> M:
    """Validate a ConfigRecord / MetricRecord as ``model`` (unknown fields refused)."""
    try:
        return model.model_validate(dict(record))
    except ValidationError as exc:
        loc, msg = first_error(exc)
        raise ProtocolError(f"{who}: record {str(key)!r}: field {loc}: {msg}") from None


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
