"""``site-node audit`` / ``coordinator audit``: verify a signed exchange log and summarise it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.audit.report import Report


def add_audit_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by both CLIs' ``audit`` subcommands."""
    p.add_argument("--log", type=Path, required=True, help="exchange log (JSONL)")
    sig = p.add_mutually_exclusive_group()
    sig.add_argument("--pub", type=Path,
                     help="signer's Ed25519 public key (PEM) to check signatures")
    sig.add_argument("--no-signatures", action="store_true",
                     help="check the hash chain only; without --pub or this flag audit fails")
    p.add_argument("--head", help="expected entry_hash of the last entry (detects truncation)")
    p.add_argument("--peer-log", dest="peer_log", type=Path,
                   help="the other side's exchange log: checked against its signed heads "
                        "recorded in --log (detects truncation or rewriting of either log)")
    p.add_argument("--peer-pub", dest="peer_pub", type=Path,
                   help="the other side's Ed25519 public key (default: the key its recorded "
                        "heads carry)")
    p.add_argument("--html", type=Path, help="also write a readable HTML report here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run_audit(args: argparse.Namespace, summarise: Report | None = None) -> int:
    """Verify chain and signatures; print a summary and the statement; exit status 0 only when
    the log verifies, no egress violation is found, signatures were checked (or waived with
    ``--no-signatures``) and, with ``--peer-log``, the other side's log holds every signed head
    of it recorded here (:func:`common.audit.anchor.check_anchors`); otherwise 1, with the
    statement withheld (:func:`common.audit.report.final_statement`).

    ``summarise`` builds the summary (default :func:`common.audit.report.site_report`;
    ``coordinator audit`` passes :func:`common.audit.report.coordinator_report`)."""
    from common.audit.html import render_html
    from common.audit.keys import AuditError, load_public_key
    from common.audit.log import verify_log
    from common.audit.report import audit_passed, final_statement, site_report
    from common.io import atomic_write_bytes

    log = Path(args.log)
    if not log.is_file():
        raise AuditError(f"{log}: log file not found" if not log.exists()
                         else f"{log}: not a regular file")
    pub = load_public_key(args.pub) if args.pub else None
    report = verify_log(log, pub, expected_head=args.head)
    summary = (summarise or site_report)(log)
    if getattr(args, "peer_log", None) is not None:
        from common.audit.anchor import check_anchors

        peer_pub = load_public_key(args.peer_pub) if getattr(args, "peer_pub", None) else None
        summary["anchors"] = check_anchors(log, Path(args.peer_log), peer_pub)
    waived = bool(getattr(args, "no_signatures", False))
    summary["statement"] = final_statement(report, summary, waived)
    if args.json:
        print(json.dumps({"verify": report.model_dump(), "summary": summary}, indent=2))
    else:
        _print_human(log, report, summary, signed=pub is not None)
    if args.html:
        try:
            atomic_write_bytes(args.html, render_html(log, report, summary).encode())
        except OSError as exc:
            raise AuditError(f"{args.html}: cannot write the HTML report "
                             f"({exc.strerror or exc})") from None
        print(f"HTML report: {args.html}")
    return 0 if audit_passed(report, summary, waived) else 1


def _print_dp(rows: list[dict]) -> None:
    for d in rows:
        print(f"  dp: run {d['run_id']}: {d['slices']} noised slices ({d['releases']}): "
              f"epsilon {d['epsilon']:.4g} at delta {d['delta']:g} (RDP accountant, "
              f"order {d['rdp_order']:g}); covers the released answers for any change of the "
              "site's data, not the teacher's training (no DP there)")


def _print_human(log: Path, report: object, summary: dict, signed: bool) -> None:
    ok = getattr(report, "ok", False)
    n = getattr(report, "n_entries", 0)
    status = "OK" if ok else f"FAILED: {getattr(report, 'reason', '')}"
    sig = "signatures checked" if signed else "signatures NOT checked (no --pub)"
    print(f"{log}: {n} entries, hash chain {status}; {sig}")
    for msg_type, per_dir in sorted(summary.get("bytes", {}).items()):
        parts = ", ".join(f"{d} {b:,} B" for d, b in sorted(per_dir.items()))
        print(f"  {msg_type}: {parts}")
    print(f"  refused replies: {summary.get('refused', 0)}")
    for r in summary.get("recoveries", []):
        state = "intact" if r.get("side_file_ok") else "MISSING OR ALTERED"
        print(f"  recovered torn line: line {r['line']} ({r['time']}): {r['torn_bytes']} B moved "
              f"to {r['side_file']} (sha256 {str(r['torn_sha256'])[:16]}..., {state})")
    for v in summary.get("violations", []):
        print(f"  VIOLATION: {v}")
    for r in summary.get("released", []):
        kinds = ", ".join(f"{k} x{v['count']}" for k, v in r["kinds"].items())
        print(f"  released under policy: {r['msg_type']}: {r['replies']} replies, "
              f"{r['bytes']:,} B in all, {r['arrays_per_reply']} arrays per reply ({kinds}); runs "
              f"{', '.join(r['runs'])}")
    _print_dp(summary.get("dp", []))
    if summary.get("dp_statement"):
        print(f"  {summary['dp_statement']}")
    for line in summary.get("budget", []):
        print(f"  {line}")
    _print_anchors(summary.get("anchors"))
    print(f"  {summary.get('statement', '')}")


def _print_anchors(a: dict | None) -> None:
    if not a:
        return
    print(f"  anchors: {a['heads_checked']} head(s) of {a['peer_log']} ({a['peer_signer']}) "
          f"recorded here; it has {a['peer_entries']} valid entries, last anchored seq "
          f"{a['last_anchored_seq']} ({a['unanchored_tail']} later entries not anchored)")
    for line in a.get("ignored", []):
        print(f"  ignored head: {line}")
    for line in a["problems"]:
        print(f"  ANCHOR: {line}")
