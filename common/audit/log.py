"""Tamper-evident, signed log of what crossed a site's (or the coordinator's) boundary.

One JSON line per message: digests of its arrays (name, shape, dtype, bytes, sha256 of the
C-order bytes), its small scalar config/metrics, the egress decision. Entries are hash-chained::

    entry_hash = sha256(canonical_json(entry without entry_hash and signature))

where the hashed body includes ``prev_hash`` (the previous line's ``entry_hash``; 64 zeros for
line 1) and ``signer``. ``signature`` is Ed25519 over the ASCII hex ``entry_hash``. Editing,
removing, inserting or reordering lines therefore breaks the chain at a definite line; only
truncating the tail is invisible to the chain alone, which is why :func:`verify_log` accepts an
``expected_head`` (the last ``entry_hash`` known from a receipt held by the peer).

Receipts (:func:`make_receipt`, all-string, so they fit a Flower ``ConfigRecord``) carry the
signed body minus the array digests, which the coordinator recomputes from the arrays it received
before checking hash and signature (:func:`verify_receipt`).

This module holds the log, its chain and its verification and summary; the entry model, hashing
and receipts live in :mod:`common.audit.entries`, the keys in :mod:`common.audit.keys`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, get_args

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from common.audit.entries import (
    ArrayDigest,
    AuditEntry,
    VerifyReport,
    canonical_json,
    clean_config,
    digest_arrays,
    entry_hash_of,
)
from common.audit.keys import (
    AuditError,
    _signature_ok,
    fingerprint,
)
from common.io import atomic_write_bytes

__all__ = [
    "CLEAN_STATEMENT", "GENESIS", "RECOVERY", "TEACHER_OUTPUTS", "AuditLog", "array_kind",
    "by_kind", "names_text", "read_entries", "recoveries", "released", "summarise_entries",
    "summarise_log", "teacher_output_names", "verify_log",
]

GENESIS = "0" * 64
#: ``msg_type`` of the entry that records a torn final line moved aside (:meth:`AuditLog.recover`).
RECOVERY = "log.recovery"


def teacher_output_names() -> frozenset[str]:
    """Every array name a teacher answer may carry: the logits under each compression mode
    (``common.compress.payload_schema``: ``logits``, ``probs_u8``, ``logits_ds``) plus the
    attention maps and region-contrast cosines (``common.protocol.FEATURE_KEYS``)."""
    from common.compress import CompressionConfig, payload_schema
    from common.protocol import FEATURE_KEYS

    modes = get_args(CompressionConfig.model_fields["mode"].annotation)
    logits = {k for m in modes for k in payload_schema(CompressionConfig(mode=m), 1, 16)}
    return frozenset(logits | {str(k) for k in FEATURE_KEYS})


#: Array names a site may send, per message type (the teacher outputs of ``common.protocol``
#: in every compression mode); ``site-node audit --policy`` uses the policy's names instead.
TEACHER_OUTPUTS: dict[str, frozenset[str]] = {
    "train": frozenset(),
    "query.teacher_outputs": teacher_output_names(),
    "evaluate": frozenset(),
}
CLEAN_STATEMENT = ("No array other than teacher outputs on coordinator-provided proxy data "
                   "left this site")


# ----------------------------------------------------------------------------- the log
def _final_line(fh: IO[bytes]) -> tuple[int, bytes]:
    """``(offset, bytes)`` of the file's final line, its newline included (``(0, b"")`` if empty).

    Read backwards in 4 KiB steps, so a long log costs one small read."""
    end = fh.seek(0, os.SEEK_END)
    pos, buf = end, b""
    while pos > 0:
        step = min(4096, pos)
        pos -= step
        fh.seek(pos)
        buf = fh.read(step) + buf
        cut = buf.rfind(b"\n", 0, len(buf) - 1)  # the newline ending the line before the last
        if cut >= 0:
            return pos + cut + 1, buf[cut + 1:]
    return 0, buf


def _parse(raw: bytes) -> AuditEntry | None:
    try:
        return AuditEntry.model_validate_json(raw)
    except ValidationError:
        return None


class AuditLog:
    """Append-only JSONL log; ``append`` continues the chain of an existing file.

    A torn final line (a crash or power loss mid-append) is found when the log is opened and
    moved aside by :meth:`recover`, so it never blocks later appends and is never lost."""

    def __init__(self, path: Path, key: Ed25519PrivateKey | None = None) -> None:
        self.path = path
        self.key = key
        self.signer = fingerprint(key.public_key()) if key is not None else ""
        if path.is_file():
            self.recover()

    def _locked(self) -> IO[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+b")
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        return fh

    def recover(self) -> AuditEntry | None:
        """Move a torn final line aside (file-locked); the signed recovery entry, or None.

        The torn bytes go to ``<log>.torn-<sha256[:16]>`` (fsynced) before the log is cut back
        to its last complete line; the entry ``log.recovery`` (direction ``local``, decision
        ``recovered``) records their sha256, length, offset and side file. A complete final
        entry that only lacks its newline is kept and given the newline."""
        with self._locked() as fh:
            return self._recover(fh)

    def _recover(self, fh: IO[bytes]) -> AuditEntry | None:
        offset, raw = _final_line(fh)
        if not raw or (raw.endswith(b"\n") and _parse(raw) is not None):
            return None
        if _parse(raw) is not None:  # whole entry, only the newline missing
            self._write(fh, b"\n")
            return None
        sha = hashlib.sha256(raw).hexdigest()
        side = self.path.with_name(f"{self.path.name}.torn-{sha[:16]}")
        atomic_write_bytes(side, raw)
        os.ftruncate(fh.fileno(), offset)
        return self._append_locked(fh, run_id="", peer="", direction="local", msg_type=RECOVERY,
                                   arrays=None, decision="recovered",
                                   config={"torn_sha256": sha, "torn_bytes": len(raw),
                                           "torn_offset": offset, "side_file": side.name},
                                   reason="torn final line (crash or power loss during an "
                                          "append) moved aside at start-up")

    def _tail(self, fh: IO[bytes]) -> tuple[int, str]:
        _, raw = _final_line(fh)
        if not raw:
            return 0, GENESIS
        last = _parse(raw)
        if last is None:
            raise AuditError(f"{self.path}: last line is not a valid entry; run verify")
        return last.seq, last.entry_hash

    def head(self) -> tuple[int, str]:
        """``(seq, entry_hash)`` of the last entry (``(0, GENESIS)`` for an empty log)."""
        if not self.path.is_file():
            return 0, GENESIS
        with self._locked() as fh:
            return self._tail(fh)

    @staticmethod
    def _write(fh: IO[bytes], data: bytes) -> None:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())

    def append(self, *, run_id: str, peer: str, direction: Literal["in", "out", "local"],
               msg_type: str, arrays: Mapping[str, np.ndarray] | None = None,
               config: Mapping[str, Any] | None = None,
               decision: Literal["sent", "refused", "received", "recovered"] = "sent",
               reason: str | None = None) -> AuditEntry:
        """Digest ``arrays``, clean ``config`` (:func:`clean_config`), chain, sign and durably
        append one entry (file-locked; a torn final line is first moved aside)."""
        with self._locked() as fh:
            self._recover(fh)
            return self._append_locked(fh, run_id=run_id, peer=peer, direction=direction,
                                       msg_type=msg_type, arrays=arrays, config=config,
                                       decision=decision, reason=reason)

    def _append_locked(self, fh: IO[bytes], *, run_id: str, peer: str,
                       direction: Literal["in", "out", "local"], msg_type: str,
                       arrays: Mapping[str, np.ndarray] | None, config: Mapping[str, Any] | None,
                       decision: Literal["sent", "refused", "received", "recovered"],
                       reason: str | None) -> AuditEntry:
        seq, prev = self._tail(fh)
        entry = AuditEntry(seq=seq + 1, time=datetime.now(UTC).isoformat(), run_id=str(run_id),
                           peer=str(peer), direction=direction, msg_type=str(msg_type),
                           arrays=digest_arrays(arrays or {}), config=clean_config(config or {}),
                           decision=decision, reason=reason, prev_hash=prev, signer=self.signer)
        entry.entry_hash = entry_hash_of(entry)
        if self.key is not None:
            entry.signature = self.key.sign(entry.entry_hash.encode("ascii")).hex()
        self._write(fh, canonical_json(entry.model_dump()) + b"\n")
        return entry


def read_entries(path: Path) -> Iterator[tuple[int, AuditEntry]]:
    """``(line number, entry)`` for each line; raises :class:`AuditError` naming a bad line."""
    with path.open("rb") as fh:
        for i, raw in enumerate(fh, start=1):
            try:
                yield i, AuditEntry.model_validate_json(raw)
            except ValidationError as exc:
                why = exc.errors()[0]["msg"]
                raise AuditError(f"line {i}: not a valid entry ({why})") from None


def _check_entry(i: int, e: AuditEntry, prev: AuditEntry | None,
                 pub: Ed25519PublicKey | None) -> str | None:
    """Why line ``i`` is bad given the previous good entry, or None."""
    if entry_hash_of(e) != e.entry_hash:
        return f"line {i}: entry_hash mismatch (entry edited)"
    if pub is not None and e.signer != fingerprint(pub):
        return f"line {i}: signer {e.signer or '(unsigned)'} is not the expected key"
    if pub is not None and not _signature_ok(pub, e.entry_hash, e.signature):
        return f"line {i}: bad signature (entry forged or signature altered)"
    expected_prev = GENESIS if prev is None else prev.entry_hash
    if e.prev_hash != expected_prev:
        what = "the genesis hash" if prev is None else f"line {i - 1}"
        return f"line {i}: prev_hash does not match {what} (entry removed or reordered)"
    want = prev.seq + 1 if prev else 1
    return f"line {i}: seq {e.seq} expected {want}" if e.seq != want else None


def verify_log(path: Path, public_key: Ed25519PublicKey | None = None,
               expected_head: str | None = None) -> VerifyReport:
    """Walk the chain; with ``public_key`` also check every signature and the signer."""
    prev: AuditEntry | None = None
    n = 0

    def bad(line: int, why: str) -> VerifyReport:
        return VerifyReport(ok=False, n_entries=n, head_hash=prev.entry_hash if prev else GENESIS,
                            signatures_checked=public_key is not None, first_bad_line=line,
                            reason=why)
    try:
        for i, e in read_entries(path):
            why = _check_entry(i, e, prev, public_key)
            if why:
                return bad(i, why)
            prev, n = e, i
    except AuditError as exc:
        return bad(n + 1, str(exc))
    head = prev.entry_hash if prev else GENESIS
    if expected_head is not None and head != expected_head:
        return bad(n + 1, f"line {n + 1}: log ends at {head[:12]}, expected head "
                          f"{expected_head[:12]} (entries truncated)")
    return VerifyReport(ok=True, n_entries=n, head_hash=head,
                        signatures_checked=public_key is not None)


# ----------------------------------------------------------------------------- summary
def array_kind(name: str) -> str:
    """The kind of a named array: its last dotted part (``layer1.0.bn1.running_var`` ->
    ``running_var``), so hundreds of parameter names read as a few kinds."""
    return name.rsplit(".", 1)[-1] or name


def by_kind(arrays: list[ArrayDigest] | list[str]) -> dict[str, dict[str, int]]:
    """``{kind: {"count": c, "bytes": b}}`` of digests (or bare names: bytes 0)."""
    out: dict[str, dict[str, int]] = {}
    for a in arrays:
        name, nbytes = (a, 0) if isinstance(a, str) else (a.name, a.nbytes)
        k = out.setdefault(array_kind(name), {"count": 0, "bytes": 0})
        k["count"] += 1
        k["bytes"] += int(nbytes)
    return dict(sorted(out.items()))


def names_text(names: list[str], limit: int = 6) -> str:
    """A short list of array names: all of them, or the first ``limit`` and counts by kind."""
    if len(names) <= limit:
        return str(names)
    kinds = ", ".join(f"{k} x{v['count']}" for k, v in by_kind(names).items())
    return f"{len(names)} arrays ({kinds}; first {names[:3]})"


def _violations(entries: list[tuple[int, AuditEntry]], allowed: Mapping[str, frozenset[str]],
                releases: Mapping[str, int]) -> list[str]:
    """Outgoing arrays that are not teacher outputs, or replies to no recorded request. A reply
    of a type in ``releases`` (message type -> byte cap per reply: a release the site's policy
    allowed, e.g. FedAvg weights) may carry any arrays within its cap."""
    out: list[str] = []
    asked: set[tuple[str, str]] = set()
    for i, e in entries:
        if e.direction == "in":
            asked.add((e.run_id, e.msg_type))
        if e.direction != "out" or e.decision != "sent":
            continue
        total = sum(a.nbytes for a in e.arrays)
        if e.msg_type in releases:
            if total > releases[e.msg_type]:
                out.append(f"line {i}: {e.msg_type} reply to {e.peer} released {total:,} B > "
                           f"the policy's cap {releases[e.msg_type]:,} B")
        else:
            extra = sorted({a.name for a in e.arrays} - allowed.get(e.msg_type, frozenset()))
            if extra:
                out.append(f"line {i}: {e.msg_type} reply to {e.peer} carried "
                           f"{names_text(extra)}")
        if e.arrays and (e.run_id, e.msg_type) not in asked:
            out.append(f"line {i}: {e.msg_type} arrays sent without a logged request")
    return out


def released(entries: list[tuple[int, AuditEntry]], releases: Mapping[str, int]
             ) -> list[dict[str, Any]]:
    """Per message type in ``releases``: what left under the policy, how often, how many bytes
    (``replies``, ``bytes``, ``runs``, ``arrays_per_reply``, ``kinds``: count and bytes in
    the largest reply)."""
    out = []
    for t in sorted(releases):
        sent = [e for _, e in entries if e.msg_type == t and e.direction == "out"
                and e.decision == "sent" and e.arrays]
        if not sent:
            continue
        kinds = by_kind(list(max(sent, key=lambda e: len(e.arrays)).arrays))  # one reply
        out.append({"msg_type": t, "replies": len(sent),
                    "bytes": sum(a.nbytes for e in sent for a in e.arrays),
                    "runs": sorted({e.run_id for e in sent}),
                    "arrays_per_reply": max(len(e.arrays) for e in sent),
                    "cap_bytes": releases[t], "kinds": kinds})
    return out


def summarise_log(path: Path,
                  allowed: Mapping[str, frozenset[str]] = TEACHER_OUTPUTS) -> dict[str, Any]:
    """Bytes per (msg_type, direction), refusals, and the egress statement for a site log.

    No DP accounting here: :func:`common.audit.report.site_report` adds it."""
    return summarise_entries(list(read_entries(path)), allowed)


def summarise_entries(entries: list[tuple[int, AuditEntry]],
                      allowed: Mapping[str, frozenset[str]] = TEACHER_OUTPUTS,
                      releases: Mapping[str, int] | None = None) -> dict[str, Any]:
    """:func:`summarise_log` of already read ``(line number, entry)`` pairs; ``releases``:
    message types whose replies the site's policy lets release other arrays (type -> byte cap
    per reply), reported under ``released`` instead of as violations."""
    releases = releases or {}
    nbytes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    refused: dict[str, int] = defaultdict(int)
    for _, e in entries:
        if e.decision == "refused":
            refused[e.msg_type] += 1
        elif e.direction != "local":
            nbytes[e.msg_type][e.direction] += sum(a.nbytes for a in e.arrays)
    violations = _violations(entries, allowed, releases)
    done = released(entries, releases)
    statement = CLEAN_STATEMENT if not violations else (
        f"{len(violations)} outgoing message(s) violate the egress rule: " + "; ".join(
            violations[:5]) + (f"; ... ({len(violations) - 5} more)" if len(violations) > 5
                               else ""))
    if done and not violations:
        statement = ("No array left this site other than teacher outputs on "
                     "coordinator-provided proxy data and releases its egress policy allowed"
                     + " (released under policy: " + "; ".join(
                         f"{r['msg_type']} x{r['replies']}, {r['bytes']:,} B" for r in done)
                     + ")")
    return {"entries": len(entries), "bytes": {k: dict(v) for k, v in nbytes.items()},
            "refused": sum(refused.values()), "refused_by_type": dict(refused),
            "recoveries": recoveries(entries), "violations": violations, "released": done,
            "statement": statement}


def recoveries(entries: list[tuple[int, AuditEntry]]) -> list[dict[str, Any]]:
    """The torn final lines :meth:`AuditLog.recover` moved aside: line, time, side file,
    byte count and sha256 of the torn bytes."""
    return [{"line": i, "time": e.time, "side_file": e.config.get("side_file"),
             "torn_bytes": e.config.get("torn_bytes"), "torn_sha256": e.config.get("torn_sha256")}
            for i, e in entries if e.msg_type == RECOVERY and e.decision == "recovered"]
