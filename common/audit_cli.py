"""``site-node audit`` / ``coordinator audit``: verify a signed exchange log and summarise it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_audit_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by both CLIs' ``audit`` subcommands."""
    p.add_argument("--log", type=Path, required=True, help="exchange log (JSONL)")
    p.add_argument("--pub", type=Path, help="signer's Ed25519 public key (PEM) to check signatures")
    p.add_argument("--head", help="expected entry_hash of the last entry (detects truncation)")
    p.add_argument("--html", type=Path, help="also write a readable HTML report here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run_audit(args: argparse.Namespace) -> int:
    """Verify chain and signatures; print a summary; exit 1 when verification fails."""
    from common.audit import load_public_key, render_html, summarise_log, verify_log
    from common.io import atomic_write_bytes

    pub = load_public_key(args.pub) if args.pub else None
    report = verify_log(args.log, pub, expected_head=args.head)
    summary = summarise_log(args.log)
    if args.json:
        print(json.dumps({"verify": report.model_dump(), "summary": summary}, indent=2))
    else:
        _print_human(args.log, report, summary, signed=pub is not None)
    if args.html:
        atomic_write_bytes(args.html, render_html(args.log, report, summary).encode())
        print(f"HTML report: {args.html}")
    return 0 if report.ok else 1


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
    for d in summary.get("dp", []):
        print(f"  dp: run {d['run_id']}: {d['slices']} slices with noise sigma {d['sigma']:g}: "
              f"epsilon {d['epsilon_advanced']:.3g} (advanced composition; linear "
              f"{d['epsilon_linear']:.3g}), delta {d['delta']:g} per slice, derived L2 "
              f"sensitivity {d['sensitivity']:g}")
    print(f"  {summary.get('statement', '')}")
