"""One exchange-log entry: its models, canonical hashing, array digests, the cleaning of its
scalar config, and the receipt a site returns to prove it logged (and signed) exactly a reply.

Part of the audit log; :mod:`common.audit.log` holds the log, its chain and verification.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.audit.keys import _signature_ok, fingerprint
from common.config import StrictModel

Scalar = str | int | float | bool | None
#: Config key of an entry whose record held NaN/inf: the keys, their values and why they are null.
NONFINITE_KEY = "_nonfinite"


class ArrayDigest(StrictModel):
    """What identifies one array on the wire without revealing it."""

    name: str
    shape: list[int]
    dtype: str
    nbytes: int
    sha256: str


class AuditEntry(StrictModel):
    """One line of the log (see the module docstring for what is hashed and signed)."""

    seq: int
    time: str
    run_id: str
    peer: str
    direction: Literal["in", "out", "local"]  # "local": the log's own upkeep (recovery)
    msg_type: str
    arrays: list[ArrayDigest]
    config: dict[str, Scalar]
    decision: Literal["sent", "refused", "received", "recovered"]
    reason: str | None
    prev_hash: str
    signer: str
    entry_hash: str = ""
    signature: str = ""


class VerifyReport(StrictModel):
    """Result of :func:`verify_log`: ``ok`` or the first bad line (1-based) and why."""

    ok: bool
    n_entries: int
    head_hash: str
    signatures_checked: bool
    first_bad_line: int | None = None
    reason: str | None = None


# ----------------------------------------------------------------------------- hashing
def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no spaces, ASCII, NaN refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def digest_array(name: str, arr: np.ndarray) -> ArrayDigest:
    """Digest of one array: little-endian C-order bytes, as ``numpy.save`` would carry them."""
    a = np.ascontiguousarray(arr)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return ArrayDigest(name=name, shape=list(a.shape), dtype=str(a.dtype), nbytes=int(a.nbytes),
                       sha256=hashlib.sha256(a.tobytes()).hexdigest())


def digest_arrays(arrays: Mapping[str, np.ndarray]) -> list[ArrayDigest]:
    """Digests of ``arrays``, sorted by name (the order of the record does not matter)."""
    return [digest_array(k, arrays[k]) for k in sorted(arrays)]


def entry_hash_of(entry: AuditEntry) -> str:
    """sha256 hex of the canonical body (everything but ``entry_hash`` and ``signature``)."""
    body = entry.model_dump(exclude={"entry_hash", "signature"})
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _finite_scalar(value: Any) -> Scalar:
    """``value`` as a loggable scalar: numpy scalars unwrapped, others named by their type."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return f"<{type(value).__name__}>"


def clean_config(config: Mapping[str, Any]) -> dict[str, Scalar]:
    """``config`` made loggable: NaN/inf become null and :data:`NONFINITE_KEY` says which keys
    held what (``"hd95_mean=nan: ..."``); numpy scalars are unwrapped, other values named by type.
    So logging a record, e.g. the refusal of a reply with an undefined metric, never raises."""
    out: dict[str, Scalar] = {}
    bad: list[str] = []
    for key, value in config.items():
        v = _finite_scalar(value)
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(f"{key}={v}")
            v = None
        out[str(key)] = v
    if bad:
        out[NONFINITE_KEY] = (", ".join(bad) + ": not finite, logged as null "
                              "(strict JSON has no NaN/Infinity)")
    return out


# ----------------------------------------------------------------------------- receipts
RECEIPT_KEYS = ("entry_hash", "signature", "signer", "header")


def make_receipt(entry: AuditEntry) -> dict[str, str]:
    """What a site returns with a reply: hash, signature, signer and the body minus arrays."""
    header = entry.model_dump(exclude={"entry_hash", "signature", "arrays"})
    return {"entry_hash": entry.entry_hash, "signature": entry.signature, "signer": entry.signer,
            "header": canonical_json(header).decode("ascii")}


def receipt_problem(receipt: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                    public_key: Ed25519PublicKey) -> str | None:
    """Why ``receipt`` does not prove that the site signed exactly ``arrays``; None if it does."""
    if set(receipt) != set(RECEIPT_KEYS):
        return f"receipt keys {sorted(receipt)}, expected {sorted(RECEIPT_KEYS)}"
    if receipt["signer"] != fingerprint(public_key):
        return f"receipt signed by {receipt['signer'] or '(unsigned)'}, not the site's key"
    try:
        header = json.loads(str(receipt["header"]))
        entry = AuditEntry.model_validate({**header, "arrays": digest_arrays(arrays)})
    except (ValueError, TypeError) as exc:
        return f"receipt header unreadable: {exc}"
    if entry.signer != receipt["signer"] or entry_hash_of(entry) != receipt["entry_hash"]:
        return "receipt does not match the received arrays/metadata"
    if not _signature_ok(public_key, str(receipt["entry_hash"]), str(receipt["signature"])):
        return "receipt signature invalid"
    return None


def verify_receipt(receipt: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                   public_key: Ed25519PublicKey) -> bool:
    """True when the site's signed log entry covers exactly the received ``arrays``."""
    return receipt_problem(receipt, arrays, public_key) is None
