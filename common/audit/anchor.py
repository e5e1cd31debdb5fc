"""Log anchoring: each side of an exchange keeps the other's signed log heads.

A hash chain shows edits, insertions and reorderings, but not a cut-off tail. So every
coordinator request carries the coordinator log's signed head, which the site records in its
own log (the request's ``in`` entry), and every site reply carries the site log's signed head,
which the coordinator records in its log. A head (:class:`common.protocol.LogHead`) is::

    head_seq, head_hash   seq and entry_hash of the sender's last log entry
    head_pub, head_signer the sender's raw Ed25519 public key (hex) and its fingerprint
    head_sig              Ed25519 over b"fedmtkd-log-head\\n<seq>\\n<entry_hash>"

The receiver refuses a head whose signature does not verify, and a head of a signer it saw
before that goes backwards (:class:`HeadStore`). ``audit --peer-log`` (:func:`check_anchors`)
then checks the other side's log against the heads recorded in this one: a recorded head with
seq N needs at least N entries in the peer log, the N-th with that entry_hash; otherwise the
peer log was truncated or rewritten.

Limits: entries written after the last head the other side received are not anchored (a
peer can drop its final entries made after the last exchange); a side that stops sending
heads is only visible as requests without one; both logs must be produced for the check.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.audit.entries import AuditEntry
from common.audit.keys import AuditError, fingerprint
from common.audit.log import GENESIS, AuditLog, read_entries, verify_log
from common.io import atomic_write_bytes

HEAD_FIELDS = ("head_seq", "head_hash", "head_signer", "head_pub", "head_sig")
_DOMAIN = b"fedmtkd-log-head\n"


def head_message(seq: int, entry_hash: str) -> bytes:
    """The bytes a head signature covers."""
    return _DOMAIN + f"{int(seq)}\n{entry_hash}".encode("ascii")


def sign_head(key: Ed25519PrivateKey, seq: int, entry_hash: str) -> dict[str, Any]:
    """The signed head of a log whose last entry is ``(seq, entry_hash)``."""
    pub = key.public_key()
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"head_seq": int(seq), "head_hash": entry_hash, "head_signer": fingerprint(pub),
            "head_pub": raw.hex(), "head_sig": key.sign(head_message(seq, entry_hash)).hex()}


def log_head(log: AuditLog) -> dict[str, Any]:
    """The signed head of ``log`` now (its key signs it)."""
    if log.key is None:
        raise AuditError(f"{log.path}: an unsigned log has no signed head")
    return sign_head(log.key, *log.head())


def head_of(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The head fields of a record or an entry's config, or None when there are none."""
    if "head_seq" not in config:
        return None
    return {k: config.get(k) for k in HEAD_FIELDS}


def head_problem(head: Mapping[str, Any], signer: str | None = None) -> str | None:
    """Why ``head`` is not a valid signed head (of ``signer``, when given); None if it is."""
    try:
        pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(head["head_pub"])))
        seq, entry_hash = int(head["head_seq"]), str(head["head_hash"])
        pub.verify(bytes.fromhex(str(head["head_sig"])), head_message(seq, entry_hash))
    except (KeyError, ValueError, TypeError, InvalidSignature):
        return "log head signature invalid (forged or altered head)"
    if fingerprint(pub) != head["head_signer"]:
        return "log head signer does not match its public key"
    if signer is not None and head["head_signer"] != signer:
        return f"log head signed by {head['head_signer']}, expected {signer}"
    return None


class HeadStore:
    """The last head seen per signer (a JSON file): a head that goes backwards, or a different
    hash at the same seq, means the peer cut or rewrote its log."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def admit(self, head: Mapping[str, Any], strict: bool = False) -> str | None:
        """Check ``head`` (signature, no rollback) and remember it; why it is refused, or None.
        ``strict``: the seq must be greater than the last one of its signer (a request head:
        the same head twice is a replay)."""
        why = head_problem(head)
        if why:
            return why
        seen = self._load()
        last = seen.get(str(head["head_signer"]))
        seq, entry_hash = int(head["head_seq"]), str(head["head_hash"])
        if strict and last and seq <= int(last["seq"]):
            return (f"log head seq {seq} not after seq {last['seq']} seen before "
                    "(a replayed, reordered or rolled-back request)")
        if last and seq < int(last["seq"]):
            return f"peer log rolled back: head seq {seq} after seq {last['seq']}"
        if last and seq == int(last["seq"]) and entry_hash != last["hash"]:
            return f"peer log forked: head seq {seq} with another entry_hash"
        seen[str(head["head_signer"])] = {"seq": seq, "hash": entry_hash}
        atomic_write_bytes(self.path, json.dumps(seen, sort_keys=True).encode())
        return None


def recorded_heads(entries: list[tuple[int, AuditEntry]]) -> list[tuple[int, dict[str, Any]]]:
    """``(line, head)`` of every peer head recorded in a log (incoming entries only)."""
    out = []
    for i, e in entries:
        head = head_of(e.config) if e.direction == "in" else None
        if head is not None:
            out.append((i, head))
    return out


def _readable(path: Path) -> list[tuple[int, AuditEntry]]:
    out: list[tuple[int, AuditEntry]] = []
    try:
        out.extend(read_entries(path))
    except AuditError:
        pass
    return out


def _peer_pub(heads: list[tuple[int, dict[str, Any]]], signer: str) -> Ed25519PublicKey | None:
    """The public key carried by a validly signed recorded head of ``signer``."""
    for _, h in heads:
        if h["head_signer"] == signer and head_problem(h) is None:
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(h["head_pub"])))
    return None


def _peer_signer(peer_entries: list[tuple[int, AuditEntry]],
                 heads: list[tuple[int, dict[str, Any]]],
                 peer_pub: Ed25519PublicKey | None) -> str:
    """Whose log the peer log is: ``peer_pub``, else its first entry's signer, else (an emptied
    log) the only signer whose heads are recorded here; "" when unknown."""
    if peer_pub is not None:
        return fingerprint(peer_pub)
    if peer_entries:
        return peer_entries[0][1].signer
    signers = {str(h["head_signer"]) for _, h in heads}
    return signers.pop() if len(signers) == 1 else ""


def _head_issue(own: Path, i: int, h: Mapping[str, Any], peer: Path,
                hashes: list[str]) -> str | None:
    """Why the peer log does not contain the (validly signed) head recorded at ``own`` line
    ``i``."""
    seq, want = int(h["head_seq"]), str(h["head_hash"])
    if seq > len(hashes):
        return (f"TRUNCATED: {own} line {i} holds {peer.name}'s head seq {seq} "
                f"({want[:12]}), but {peer.name} has only {len(hashes)} valid entries")
    got = GENESIS if seq == 0 else hashes[seq - 1]
    if got != want:
        return (f"REWRITTEN: {peer.name} entry {seq} has hash {got[:12]}, but {own} line {i} "
                f"recorded {want[:12]}")
    return None


def check_anchors(own: Path, peer: Path, peer_pub: Ed25519PublicKey | None = None
                  ) -> dict[str, Any]:
    """Check the peer's log ``peer`` against the peer heads recorded in ``own``.

    The peer is ``peer_pub``, else the signer of ``peer``'s entries (an empty ``peer``: the
    only signer of the heads recorded in ``own``); its log is verified with
    ``peer_pub`` or else with the public key its recorded heads carry. Returns ``peer_signer``,
    ``heads_checked``, ``peer_entries`` (valid entries), ``last_anchored_seq``,
    ``unanchored_tail`` (entries after it: not covered), ``ignored`` (recorded heads whose
    signature does not verify: refused when they arrived, they anchor nothing) and
    ``problems`` (empty: passed)."""
    if not peer.is_file():
        raise AuditError(f"{peer}: peer log file not found")
    peer_entries = _readable(peer)
    heads = recorded_heads(_readable(own))
    signer = _peer_signer(peer_entries, heads, peer_pub)
    claimed = [(i, h) for i, h in heads if h["head_signer"] == signer]
    mine = [(i, h) for i, h in claimed if head_problem(h, signer) is None]
    ignored = [f"{own}: line {i}: {head_problem(h, signer)}" for i, h in claimed
               if head_problem(h, signer) is not None]
    report = verify_log(peer, peer_pub or _peer_pub(mine, signer))
    problems = [] if report.ok else [f"{peer}: {report.reason}"]
    if not report.signatures_checked:
        problems.append(f"{peer}: no valid head of its signer {signer or '(none)'} recorded "
                        f"in {own}: its signatures cannot be checked")
    hashes = [e.entry_hash for _, e in peer_entries[:report.n_entries]]
    problems += [p for i, h in mine if (p := _head_issue(own, i, h, peer, hashes))]
    if not mine:
        problems.append(f"{own} holds no head signed by {signer or '(unknown)'}: nothing "
                        f"anchors {peer}")
    last = max((int(h["head_seq"]) for _, h in mine), default=0)
    return {"peer_log": str(peer), "peer_signer": signer, "heads_checked": len(mine),
            "peer_entries": len(hashes), "last_anchored_seq": last,
            "unanchored_tail": max(len(hashes) - last, 0), "ignored": ignored,
            "problems": problems}
