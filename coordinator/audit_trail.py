"""The coordinator's side of the exchange log: what it sent, what it received, the receipts.

Files under ``<out>/audit/``: ``coordinator.jsonl`` (hash-chained log signed with
``coordinator.key``, generated on first use, ``coordinator.pub`` beside it) and
``receipts.jsonl`` (one line per received reply: site, node, message type, the site's receipt
and whether it verified). With a keys folder (run config ``site-keys-dir``, holding
``<site>.pub`` per site) every reply must carry a receipt that verifies against the arrays and
scalars actually received and the public key of the site it claims to be; otherwise the
reply is rejected (the site is dropped). Without one, receipts are stored unverified.

Log anchoring (:mod:`common.audit.anchor`): every request carries this log's signed ``head``
(the site records it), and every accepted reply's site ``head`` (its signature, the site's key,
the receipt's entry, never behind an earlier one) is recorded in the reply's ``in`` entry.
``peer_heads.json`` keeps the last head per site key. With a keys folder a reply without a
valid head is rejected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.audit.anchor import HeadStore, head_problem, log_head
from common.audit.entries import clean_config, receipt_problem
from common.audit.keys import fingerprint, load_public_key
from common.audit.log import AuditLog
from common.config import ConfigError, safe_name
from common.io import strict_json_dumps
from common.protocol import Key, LogHead
from common.records import load_or_create_key, loggable, record_contents


class CoordinatorTrail:
    """Signed log + receipt store of one federated run."""

    def __init__(self, out: Path, run_id: str, keys_dir: Path | None = None) -> None:
        folder = out / "audit"
        self.log = AuditLog(folder / "coordinator.jsonl",
                            load_or_create_key(folder / "coordinator.key"))
        self.receipts = folder / "receipts.jsonl"
        self.heads = HeadStore(folder / "peer_heads.json")
        self.run_id, self.keys_dir = run_id, keys_dir

    def sent(self, node: int, msg_type: str, rd: Any) -> None:
        """Attach this log's signed head to the outgoing request ``rd`` (the site records it:
        log anchoring), then log the request."""
        from flwr.app import ConfigRecord

        rd[Key.HEAD] = ConfigRecord(log_head(self.log))
        arrays, scalars = record_contents(rd)
        self.log.append(run_id=self.run_id, peer=f"node {node}", direction="out",
                        msg_type=msg_type, arrays=arrays, config=loggable(scalars))

    def error(self, node: int, msg_type: str, reason: str) -> None:
        """Log an error reply (e.g. a site's egress refusal): no payload came back."""
        self.log.append(run_id=self.run_id, peer=f"node {node}", direction="in",
                        msg_type=msg_type, decision="refused", reason=f"error reply: {reason}")

    def _problem(self, site: str, receipt: dict[str, Any] | None, arrays: dict,
                 scalars: dict) -> str | None:
        if self.keys_dir is None:
            return None
        if receipt is None:
            return "reply carries no signed receipt"
        try:
            safe_name(site, "site name")  # it names a key file: no path characters
        except ConfigError as exc:
            return str(exc)
        pub = self.keys_dir / f"{site}.pub"
        if not pub.is_file():
            return f"no public key {pub} for site {site!r}"
        why = receipt_problem(receipt, arrays, load_public_key(pub))
        header = json.loads(str(receipt["header"])) if why is None else {}
        if why is None and header.get("config") != clean_config(loggable(scalars)):
            why = "receipt does not match the received scalars"
        if why is None and header.get("run_id") != self.run_id:
            why = f"receipt is for run {header.get('run_id')!r}, not {self.run_id!r} (replay?)"
        return why

    def _head_problem(self, site: str, head: dict[str, Any] | None,
                      receipt: dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
        """The reply's site log head (validated) and why it is refused: forged, not the
        receipt's entry, not the site's key, or behind a head seen before (log cut)."""
        from pydantic import ValidationError

        if head is None:
            return {}, "reply carries no signed log head" if self.keys_dir is not None else None
        try:
            h = LogHead.model_validate(head).model_dump()
        except ValidationError as exc:
            return {}, f"log head malformed: {str(exc).splitlines()[0][:200]}"
        if self.keys_dir is not None:
            signer = fingerprint(load_public_key(self.keys_dir / f"{site}.pub"))
            why = head_problem(h, signer)
            if why is None and receipt is not None and h["head_hash"] != receipt["entry_hash"]:
                why = "log head is not the receipt's entry"
            if why:
                return h, why
        why = self.heads.admit(h)
        return h, f"site {why}" if why else None

    def received(self, node: int, msg_type: str, rd: Any) -> tuple[Any, str | None]:
        """Check and log one reply; returns it without its receipt, and why it is rejected."""
        from flwr.app import RecordDict

        receipt = dict(rd[Key.RECEIPT]) if Key.RECEIPT in rd.keys() else None
        head = dict(rd[Key.HEAD]) if Key.HEAD in rd.keys() else None
        content = RecordDict({k: v for k, v in rd.items() if k not in (Key.RECEIPT, Key.HEAD)})
        arrays, scalars = record_contents(content)
        site = str(scalars.get("site_name", f"node {node}"))
        why = self._problem(site, receipt, arrays, scalars)
        anchor, head_why = self._head_problem(site, head, receipt) if why is None else ({}, None)
        why = why or head_why
        self.log.append(run_id=self.run_id, peer=f"node {node}", direction="in",
                        msg_type=msg_type, arrays=arrays,
                        config={**loggable(scalars), "receipt": (receipt or {}).get(
                            "entry_hash", ""), "receipt_verified": self.keys_dir is not None
                            and why is None, **(anchor if why is None else {})},
                        decision="refused" if why else "received", reason=why)
        line = {"site": site, "node": node, "msg_type": msg_type, "receipt": receipt,
                "verified": self.keys_dir is not None and why is None, "problem": why}
        with self.receipts.open("a") as fh:
            fh.write(strict_json_dumps(line, sort_keys=True) + "\n")
        return content, why


def run_coordinator_audit(args: Any) -> int:
    """``coordinator audit``: like ``site-node audit``, but the egress statement (which is about
    a site's outgoing arrays) is replaced by the coordinator's receipt statistics."""
    from common.audit.cli import run_audit
    from common.audit.report import coordinator_report

    return run_audit(args, coordinator_report)
