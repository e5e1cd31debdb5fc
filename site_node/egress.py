"""The site's egress gate: every message in and out is logged, every reply checked and signed.

Node config keys (all optional):

* ``state-dir``: where the gate keeps its state (default ``<teacher-dir>/site_state``):
  ``audit/egress.jsonl`` (the signed, hash-chained exchange log), ``query_budget.json``;
* ``audit-key``: the site's Ed25519 signing key (PEM, mode 0600). Default
  ``<state-dir>/audit/site.key``; when the file does not exist it is generated on first use
  together with ``site.pub`` next to it (give that public key to the coordinator);
* ``compression``, ``downsample-factor``, ``noise-sigma``, ``noise-on``: how query logits are
  encoded (:func:`codec_from_node_config`, :mod:`common.compress`);
* ``policy-path``: the egress policy TOML (default: :func:`site_node.policy.default_policy`,
  identical to ``deploy/egress-policy.toml``).

Flow of one message (:meth:`EgressGate.respond`): log the request (``in``), admit queries with
the :class:`~site_node.policy.QueryBudget`, compute the reply, check it with
:func:`~site_node.policy.check_reply`, then either log ``refused`` with the reason and raise
:class:`EgressRefused` (Flower turns it into an error reply that carries no payload) or log
``sent`` and attach the signed receipt of that log entry as the reply's ``receipt`` record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.audit import AuditLog, make_receipt
from common.compress import CompressionConfig
from common.protocol import Key
from common.records import load_or_create_key, loggable, record_contents
from site_node.policy import EgressPolicy, QueryBudget, check_reply, default_policy

if TYPE_CHECKING:
    from flwr.app import RecordDict


def codec_from_node_config(node_config: dict[str, Any],
                           query_temperature: float = 1.0) -> CompressionConfig:
    """Node config ``compression`` (fp16 | int8_probs | downsample | fp32, default fp16),
    ``downsample-factor`` (2), ``noise-sigma`` (0: no noise), ``noise-on`` (probs | logits),
    ``temperature`` of int8 probabilities and probability noise (default: the query's, i.e. the
    student's KD temperature, so quantisation keeps the soft tails the student learns from)."""
    return CompressionConfig.model_validate({
        "mode": str(node_config.get("compression", "fp16")),
        "downsample_factor": int(node_config.get("downsample-factor", 2)),
        "noise_sigma": float(node_config.get("noise-sigma", 0.0)),
        "noise_on": str(node_config.get("noise-on", "probs")),
        "temperature": float(node_config.get("temperature", query_temperature))})


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
    """Policy, budget and signed log of one site (built from its node config)."""

    def __init__(self, state_dir: Path, key_path: Path | None = None,
                 policy: EgressPolicy | None = None) -> None:
        self.state_dir = state_dir
        self.policy = policy or default_policy()
        self.key_path = key_path or state_dir / "audit" / "site.key"
        self.log = AuditLog(state_dir / "audit" / "egress.jsonl", load_or_create_key(self.key_path))
        self.budget = QueryBudget(state_dir / "query_budget.json", self.policy)

    @staticmethod
    def from_node_config(node_config: dict[str, Any], teacher_dir: Path) -> EgressGate:
        """Parse ``state-dir``, ``audit-key`` and ``policy-path`` (see the module docstring)."""
        from common.config import load_config

        state = Path(str(node_config.get("state-dir") or teacher_dir / "site_state"))
        key = node_config.get("audit-key")
        pol = node_config.get("policy-path")
        policy = load_config(Path(str(pol)), EgressPolicy) if pol else None
        return EgressGate(state, Path(str(key)) if key else None, policy)

    def refuse(self, req: RequestInfo, why: str, arrays: dict | None = None,
               scalars: dict | None = None) -> EgressRefused:
        """Log a refusal and return the exception to raise."""
        self.log.append(run_id=req.run_id, peer=req.peer, direction="out", msg_type=req.msg_type,
                        arrays=arrays, config=loggable(scalars or {}), decision="refused",
                        reason=why)
        return EgressRefused(f"egress refused: {why}")

    def respond(self, req: RequestInfo, request: RecordDict,
                compute: Callable[[], RecordDict]) -> RecordDict:
        """Log ``request``, admit it, compute the reply, check it, log and sign it."""
        arrays, scalars = record_contents(request)
        self.log.append(run_id=req.run_id, peer=req.peer, direction="in", msg_type=req.msg_type,
                        arrays=arrays, config=loggable(scalars), decision="received")
        if req.n is not None:
            admitted = self.budget.admit_query(req.run_id, req.n)
            if not admitted.allowed:
                raise self.refuse(req, str(admitted.reason))
        reply = compute()
        return self.seal(req, reply)

    def seal(self, req: RequestInfo, reply: RecordDict) -> RecordDict:
        """Check ``reply`` against the policy; refuse, or log ``sent`` and attach the receipt."""
        from flwr.app import ConfigRecord

        arrays, scalars = record_contents(reply)
        decision = check_reply(self.policy, req.msg_type, arrays, scalars, req.n, req.side)
        if not decision.allowed:
            raise self.refuse(req, str(decision.reason), arrays, scalars)
        entry = self.log.append(run_id=req.run_id, peer=req.peer, direction="out",
                                msg_type=req.msg_type, arrays=arrays, config=loggable(scalars),
                                decision="sent")
        reply[Key.RECEIPT] = ConfigRecord(dict(make_receipt(entry)))  # type: ignore[arg-type]
        return reply
