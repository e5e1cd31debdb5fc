"""Replay protection and the pinned coordinator key (checked before any teacher work).

Every coordinator request may carry the coordinator log's signed ``head``
(:mod:`common.audit.anchor`); the coordinator appends one log entry per request it sends, so
its heads to one site strictly increase. The site refuses:

* a head whose signature does not verify, or that is not newer than the last head of the
  same signer (``head_seq`` must strictly increase: a replayed or rolled-back head);
* with a pinned coordinator key (node config ``coordinator-key``: the coordinator's audit
  public key, PEM, installed with ``site-node keys pin``), a head signed by any other key;
* a request without a head when heads are required (policy ``replay.require_head``; unset:
  required exactly when a coordinator key is pinned);
* a request already answered: its request id (sha256 of the message type, its scalars, its
  arrays' digests and its head signature) is kept in ``<state-dir>/answered.txt`` and
  answered at most once.

Without a pinned key the site logs a WARNING on each request: heads are then self-asserted
(any key), so budgets are shared by all coordinators (:data:`site_node.budget.UNPINNED`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.audit.anchor import HeadStore
from common.audit.keys import fingerprint, load_public_key
from site_node.budget import UNPINNED

log = logging.getLogger(__name__)
ANSWERED = "answered.txt"


def request_id(msg_type: str, arrays: Mapping[str, np.ndarray], scalars: Mapping[str, Any],
               head: Mapping[str, Any] | None) -> str:
    """sha256 hex of what makes a request unique (type, scalars, arrays, head signature)."""
    h = hashlib.sha256(msg_type.encode())
    h.update(json.dumps({k: str(v) for k, v in scalars.items()}, sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype}:{a.shape}".encode())
        h.update(hashlib.sha256(a.tobytes()).digest())
    h.update(str((head or {}).get("head_sig", "")).encode())
    return h.hexdigest()


class ReplayGuard:
    """The replay rule of one site (module docstring). ``pinned``: the coordinator's audit
    public key file (None: not pinned); ``require_head``: None = required iff pinned."""

    def __init__(self, state_dir: Path, pinned: Path | None = None,
                 require_head: bool | None = None) -> None:
        self.state_dir = state_dir
        self.heads = HeadStore(state_dir / "audit" / "peer_heads.json")
        self.pinned = fingerprint(load_public_key(pinned)) if pinned is not None else None
        self.require_head = self.pinned is not None if require_head is None else require_head

    @property
    def identity(self) -> str:
        """Whom budgets are charged to: the pinned key's fingerprint, else :data:`UNPINNED`."""
        return self.pinned or UNPINNED

    def head_problem(self, head: Mapping[str, Any] | None) -> str | None:
        """Why the request's (validated) head is refused, or None."""
        if head is None:
            return ("request carries no signed coordinator log head (required: "
                    "replay.require_head or a pinned coordinator key)"
                    if self.require_head else None)
        if self.pinned is not None and head.get("head_signer") != self.pinned:
            return (f"request signed by unknown coordinator key {head.get('head_signer')} "
                    f"(pinned: {self.pinned})")
        why = self.heads.admit(head, strict=True)
        return f"coordinator {why}" if why else None

    def answered_once(self, rid: str) -> str | None:
        """Record ``rid`` as answered; why it is refused when it was answered before."""
        path = self.state_dir / ANSWERED
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.with_name(ANSWERED + ".lock").open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            seen = set(path.read_text().split()) if path.is_file() else set()
            if rid in seen:
                return f"replayed request {rid[:16]} (already answered once)"
            with path.open("a") as fh:
                fh.write(rid + "\n")
        return None
