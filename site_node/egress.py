"""The site's egress gate: every message in and out is logged, every reply checked and signed.

The gate is a Flower mod (:func:`egress_mod`) installed on the ``ClientApp`` as a whole
(``ClientApp(mods=[egress_mod])`` in :mod:`site_node.app`): Flower wraps every handler
registered on that app, present or future, so no handler can answer without passing the gate.

Node config keys (all optional; parsed by :class:`site_node.node_config.EgressConfig`):

* ``state-dir``: where the gate keeps its state (default ``<teacher-dir>/site_state``):
  ``audit/egress.jsonl`` (the signed, hash-chained exchange log), ``query_budget.json``,
  ``answered.txt``, ``audit/peer_heads.json``;
* ``audit-key``: the site's Ed25519 signing key (PEM, mode 0600). Default
  ``<state-dir>/audit/site.key``; when the file does not exist it is generated on first use
  together with ``site.pub`` next to it (give that public key to the coordinator);
* ``compression``, ``downsample-factor``, ``noise-sigma``, ``noise-on``: how query logits are
  encoded (:func:`codec_from_node_config`, :mod:`common.compress`);
* ``policy-path``: the egress policy TOML (default: :func:`site_node.policy.default_policy`,
  identical to ``deploy/egress-policy.toml``); an unusable file refuses (and logs) every request;
* ``coordinator-key``: the coordinator's audit public key (PEM) to pin
  (:mod:`site_node.replay`); unset: a WARNING, any signer accepted.

Flow of one message (:meth:`EgressGate.respond`): log the request (``in``, with the
coordinator's signed log ``head``), then admit it before any work
(:meth:`EgressGate.admission_problem`): the site's own configuration, the head (signature,
pinned key, strictly newer seq: :mod:`site_node.replay`), the whole request against the policy
(:func:`~site_node.policy.check_request`), the request id (answered once), the budgets
(:class:`~site_node.budget.QueryBudget`); screen query images with the membership guard
(:mod:`site_node.membership`: the site's own slices are refused), compute the reply, check it
with :func:`~site_node.policy.check_reply`, then either log ``refused`` with the reason and raise
:class:`EgressRefused` (Flower turns it into an error reply that carries no payload) or log
``sent`` and attach the signed receipt of that log entry as the reply's ``receipt`` record and
this log's signed head as its ``head`` record (the coordinator records it: log anchoring).
A message of a type no handler takes never reaches this mod (Flower rejects it first);
:class:`site_node.app.GatedClientApp` logs and refuses it with :func:`refuse_unrouted`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.audit.anchor import sign_head
from common.audit.entries import make_receipt
from common.audit.keys import AuditError
from common.audit.log import AuditLog
from common.compress import CompressionConfig
from common.protocol import Key, LogHead
from common.records import load_or_create_key, loggable, record_contents
from site_node.budget import FILE as BUDGET_FILE
from site_node.budget import QueryBudget
from site_node.membership import membership_refusal
from site_node.node_config import EgressConfig
from site_node.policy import (
    WEIGHT_RELEASE_TYPE,
    EgressPolicy,
    check_reply,
    check_request,
    default_policy,
)
from site_node.replay import ReplayGuard, request_id

if TYPE_CHECKING:
    import numpy as np
    from flwr.app import Context, Message, RecordDict

log = logging.getLogger(__name__)
Screen = Callable[[dict[str, "np.ndarray"]], "str | None"]  # request arrays -> refusal or None


def codec_from_node_config(node_config: dict[str, Any],
                           query_temperature: float = 1.0) -> CompressionConfig:
    """Node config ``compression`` (fp16 | int8_probs | downsample | fp32), ``downsample-factor``,
    ``noise-sigma``, ``noise-on`` (probs | logits), ``temperature`` of int8 probabilities and
    probability noise (default: the query's, i.e. the student's KD temperature, so quantisation
    keeps the soft tails the student learns from); unset keys: :class:`CompressionConfig`."""
    return EgressConfig.from_node_config(node_config).codec(query_temperature)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class EgressRefused(RuntimeError):
    """A reply was refused by the egress policy (the reason is in the message and the log)."""


@dataclass(frozen=True)
class RequestInfo:
    """What the gate needs to know about the request being answered."""

    msg_type: str
    run_id: str
    peer: str
    n: int | None = None
    side: int | None = None


class EgressGate:
    """Policy, replay rule, budgets and signed log of one site (built from its node config).

    ``broken``: why the site's configuration (policy file, pinned key) cannot be used; every
    request is then logged and refused with that reason (fail closed)."""

    def __init__(self, state_dir: Path, key_path: Path | None = None,
                 policy: EgressPolicy | None = None, pinned: Path | None = None,
                 broken: str | None = None) -> None:
        self.state_dir = state_dir
        self.policy = policy or default_policy()
        self.key_path = key_path or state_dir / "audit" / "site.key"
        self.log = AuditLog(state_dir / "audit" / "egress.jsonl", load_or_create_key(self.key_path))
        self.budget = QueryBudget(state_dir / BUDGET_FILE, self.policy)
        self.broken = broken
        self.replay = ReplayGuard(state_dir, None, self.policy.replay.require_head)
        if pinned is not None and broken is None:
            try:
                self.replay = ReplayGuard(state_dir, pinned, self.policy.replay.require_head)
            except (AuditError, OSError, ValueError) as exc:
                self.broken = f"pinned coordinator key unusable: {_first_line(exc)}"

    @staticmethod
    def from_node_config(node_config: dict[str, Any], teacher_dir: Path | None = None
                         ) -> EgressGate:
        """Parse ``state-dir``, ``audit-key`` and ``policy-path`` (see the module docstring);
        ``teacher_dir`` stands in for a missing ``teacher-dir`` key."""
        cfg = EgressConfig.from_node_config(node_config)
        if cfg.teacher_dir is None and teacher_dir is not None:
            cfg = cfg.model_copy(update={"teacher_dir": teacher_dir})
        return EgressGate.from_config(cfg)

    @staticmethod
    def from_config(cfg: EgressConfig) -> EgressGate:
        """The gate of a parsed node config; an unusable policy file makes a ``broken`` gate
        (every request refused and logged) instead of raising."""
        from common.config import load_config

        try:
            policy = load_config(cfg.policy_path, EgressPolicy) if cfg.policy_path else None
            broken = None
        except Exception as exc:  # any unreadable policy: logged and refused per request
            policy, broken = None, f"egress policy {cfg.policy_path} unusable: {_first_line(exc)}"
        state_dir = cfg.resolved_state_dir()
        if cfg.coordinator_key is None and broken is None:
            _warn_unpinned_once(state_dir)
        return EgressGate(state_dir, cfg.audit_key, policy, cfg.coordinator_key, broken)

    def refuse(self, req: RequestInfo, why: str, arrays: dict | None = None,
               scalars: dict | None = None) -> EgressRefused:
        """Log a refusal and return the exception to raise."""
        self.log.append(run_id=req.run_id, peer=req.peer, direction="out", msg_type=req.msg_type,
                        arrays=arrays, config=loggable(scalars or {}), decision="refused",
                        reason=why)
        return EgressRefused(f"egress refused: {why}")

    def log_request(self, req: RequestInfo, request: RecordDict
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any], str | None]:
        """Log ``request`` (``in``) before anything else: its arrays, and why it is unreadable
        if its arrays cannot be digested (then its record names are logged instead)."""
        try:
            arrays, scalars = record_contents(request)
            config, why = loggable(scalars), None
        except Exception as exc:  # any undecodable record: logged here, refused by the caller
            arrays, scalars = {}, {}
            why = f"request unreadable: {type(exc).__name__}: {exc}"[:500]
            config = {"records": ",".join(sorted(str(k) for k in request.keys()))}
        self.log.append(run_id=req.run_id, peer=req.peer, direction="in", msg_type=req.msg_type,
                        arrays=arrays, config=config, decision="received", reason=why)
        return arrays, scalars, why

    def admission_problem(self, req: RequestInfo, request: RecordDict,
                          arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> str | None:
        """Everything checked before any work, in order: the site's own configuration, the
        coordinator's head (signature, pinned key, strictly newer), the whole request against
        the policy, the request id (answered at most once), then the query budgets."""
        if self.broken:
            return self.broken
        head, why = self.peer_head(request)
        why = why or self.replay.head_problem(head)
        if why:
            return why
        decision = check_request(self.policy, req.msg_type, arrays, req.n, req.side)
        if not decision.allowed:
            return str(decision.reason)
        why = self.replay.answered_once(request_id(req.msg_type, arrays, scalars, head))
        if why is None and req.n is not None:
            admitted = self.budget.admit_query(req.run_id, req.n, self.replay.identity)
            why = None if admitted.allowed else str(admitted.reason)
        return why

    def respond(self, req: RequestInfo, request: RecordDict,
                compute: Callable[[], RecordDict], screen: Screen | None = None) -> RecordDict:
        """Log ``request`` first, admit it (:meth:`admission_problem`), ``screen`` its arrays
        (a reason refuses it before any compute: the membership guard), compute the reply,
        check it, log and sign it.

        A request that cannot be read, or that the handler (or the screen) fails on, e.g. a
        :class:`~common.protocol.ProtocolError` while decoding it, is logged ``refused`` with
        the one-line reason; the handler's exception then propagates unchanged (Flower turns it
        into the error reply)."""
        arrays, scalars, unreadable = self.log_request(req, request)
        why = unreadable or self.admission_problem(req, request, arrays, scalars)
        if why:
            raise self.refuse(req, why)
        try:
            why = screen(arrays) if screen is not None else None
            if why:
                raise self.refuse(req, why)
            reply = compute()
        except EgressRefused:
            raise
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0][:500]
            self.refuse(req, f"request refused by the handler: {type(exc).__name__}: {first}")
            raise
        return self.seal(req, reply)

    @staticmethod
    def peer_head(request: RecordDict) -> tuple[dict[str, Any] | None, str | None]:
        """The coordinator's signed log ``head`` of ``request`` (already recorded in the
        request's ``in`` entry), validated, or None when absent; and why it is malformed."""
        from pydantic import ValidationError

        if Key.HEAD not in request.keys():
            return None, None
        try:
            return LogHead.model_validate(dict(request[Key.HEAD])).model_dump(), None
        except (ValidationError, TypeError, ValueError) as exc:
            return None, f"coordinator log head malformed: {_first_line(exc)[:200]}"

    def seal(self, req: RequestInfo, reply: RecordDict) -> RecordDict:
        """Check ``reply`` against the policy; refuse, or log ``sent`` and attach the receipt
        and this log's signed head (that very entry: the coordinator records it)."""
        from flwr.app import ConfigRecord

        arrays, scalars = record_contents(reply)
        decision = check_reply(self.policy, req.msg_type, arrays, scalars, req.n, req.side)
        if not decision.allowed:
            raise self.refuse(req, str(decision.reason), arrays, scalars)
        entry = self.log.append(run_id=req.run_id, peer=req.peer, direction="out",
                                msg_type=req.msg_type, arrays=arrays, config=loggable(scalars),
                                decision="sent")
        reply[Key.RECEIPT] = ConfigRecord(dict(make_receipt(entry)))  # type: ignore[arg-type]
        if self.log.key is not None:
            reply[Key.HEAD] = ConfigRecord(sign_head(self.log.key, entry.seq, entry.entry_hash))
        return reply


# ----------------------------------------------------------------------------- Flower mod
def request_info(msg: Message) -> RequestInfo:
    """What the gate needs from a request: its type, ``run_id`` and, for ``query.*`` messages,
    the slice count ``n`` (``len(slice_hashes)``, 0 when undeclared: such a query is refused
    by the budget) and the side ``size`` of the ``config`` record."""
    mtype = str(msg.metadata.message_type)
    cfg = msg.content.config_records.get(str(Key.CONFIG))
    fields: dict[str, Any] = dict(cfg) if cfg is not None else {}
    n: int | None = None
    side: int | None = None
    if mtype.split(".")[0] == "query" and mtype != WEIGHT_RELEASE_TYPE:  # fedavg: no slices
        hashes = fields.get("slice_hashes")
        n = len(hashes) if isinstance(hashes, list) else 0
        side = int(fields["size"]) if isinstance(fields.get("size"), int) else None
    return RequestInfo(mtype, str(fields.get("run_id", "")), f"node {msg.metadata.src_node_id}",
                       n, side)


def egress_mod(msg: Message, context: Context,
               call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower mod gating every handler: log the request, admit it, run the handler, check its
    reply against the egress policy, then refuse (:class:`EgressRefused`, logged) or log it
    ``sent`` and attach the signed receipt."""
    from flwr.app import Message

    from common.logs import ensure_logging

    ensure_logging()
    gate = EgressGate.from_config(EgressConfig.from_node_config(dict(context.node_config)))
    req = request_info(msg)

    def compute() -> RecordDict:
        reply = call_next(msg, context)
        if reply.has_error():
            raise gate.refuse(req, f"handler error reply {reply.error.code}")
        return reply.content

    screen = (partial(membership_refusal, dict(context.node_config), gate.policy.membership)
              if req.n is not None else None)  # queries: the site's own slices are refused
    content = gate.respond(req, msg.content, compute, screen)
    log.debug("%s %s: reply sealed", req.msg_type, req.run_id)
    return Message(content, reply_to=msg)


def refuse_unrouted(msg: Message, context: Context, why: str) -> EgressRefused:
    """Log (``in``, then a signed ``refused`` entry with ``why``) a message that no handler
    takes, e.g. an unknown message type, which Flower rejects before any mod runs; returns the
    exception to raise."""
    from common.logs import ensure_logging

    ensure_logging()
    gate = EgressGate.from_config(EgressConfig.from_node_config(dict(context.node_config)))
    req = request_info(msg)
    gate.log_request(req, msg.content)
    return gate.refuse(req, why)


UNPINNED_MARKER = "no_pinned_key.warned"


def _warn_unpinned_once(state_dir: Path) -> None:
    """WARNING once per state folder (each message runs in a fresh process, so a per-process
    warning would repeat on every message); later messages log it at INFO. ``site-node run``
    warns at start too, and the audit names the mode ("any coordinator (no pinned key)")."""
    marker = state_dir / UNPINNED_MARKER
    text = ("no pinned coordinator key (node config coordinator-key): requests signed by any "
            "key are accepted and share one query budget")
    if marker.exists():
        log.info(text)
        return
    log.warning(text)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # a read-only state folder fails later, where the log is written
        pass
