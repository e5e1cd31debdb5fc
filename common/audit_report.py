"""What ``site-node audit`` and ``coordinator audit`` report: the log summary plus DP accounting.

:mod:`common.audit` (the signed log) and :mod:`common.dp` (the privacy maths) do not import each
other; this module combines them. A report is the dict of :func:`common.audit.summarise_log`
(``entries``, ``bytes``, ``refused``, ``refused_by_type``, ``violations``, ``statement``) with
``dp`` (:func:`common.dp.dp_accounting`, one row per noised run) appended; :func:`render_html`
turns a verification result and a report into a standalone page.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from common.audit import (
    TEACHER_OUTPUTS,
    AuditEntry,
    AuditError,
    VerifyReport,
    read_entries,
    summarise_entries,
)
from common.dp import dp_accounting

Report = Callable[[Path], dict[str, Any]]


def _with_dp(summary: dict[str, Any], entries: list[tuple[int, AuditEntry]]) -> dict[str, Any]:
    summary["dp"] = dp_accounting([e for _, e in entries])
    return summary


def _check_side_files(path: Path, summary: dict[str, Any]) -> None:
    """Add ``side_file_ok`` to each recovery: the side file exists and has the logged sha256."""
    for r in summary.get("recoveries", []):
        name = str(r["side_file"])
        side = path.parent / name
        r["side_file_ok"] = Path(name).name == name and side.is_file() and (
            hashlib.sha256(side.read_bytes()).hexdigest() == r["torn_sha256"])


def site_report(path: Path, allowed: Mapping[str, frozenset[str]] = TEACHER_OUTPUTS
                ) -> dict[str, Any]:
    """A site's log: bytes, refusals, recovered torn lines, the egress statement (arrays named in
    ``allowed`` per message type only: the teacher outputs, or the site policy's names) and DP.
    Only the readable entries are summarised (the verification names the first bad line)."""
    entries = _readable_entries(path)
    summary = summarise_entries(entries, allowed)
    _check_side_files(path, summary)
    return _with_dp(summary, entries)


WITHHELD = "STATEMENT WITHHELD"


def final_statement(report: VerifyReport, summary: Mapping[str, Any], unsigned_ok: bool) -> str:
    """The statement ``audit`` may print: the summary's, or why it is withheld (the log did not
    verify, or its signatures were not checked and ``--no-signatures`` was not given).
    Violations already replace the clean statement in the summary."""
    if not report.ok:
        return f"{WITHHELD}: the log did not verify ({report.reason})"
    if not report.signatures_checked and not unsigned_ok:
        return (f"{WITHHELD}: signatures not checked (give --pub KEY, or --no-signatures to "
                "accept a check of the hash chain alone)")
    bad_side = [r["side_file"] for r in summary.get("recoveries", []) if not r.get("side_file_ok")]
    if bad_side:
        return f"{WITHHELD}: recovered torn line(s) missing or altered in {bad_side}"
    anchors = summary.get("anchors") or {}
    if anchors.get("problems"):
        return (f"{WITHHELD}: the other side's log does not match the signed heads recorded "
                f"here ({anchors['problems'][0]})")
    return str(summary.get("statement", ""))


def audit_passed(report: VerifyReport, summary: Mapping[str, Any], unsigned_ok: bool) -> bool:
    """Exit status 0 of ``audit``: verified, no violation, signatures checked or explicitly
    waived, every recovered torn line's side file intact and, with ``--peer-log``, the other
    side's log holding every signed head recorded here."""
    statement = final_statement(report, summary, unsigned_ok)
    return not statement.startswith(WITHHELD) and not summary.get("violations")


def coordinator_statement(entries: list[tuple[int, AuditEntry]]) -> str:
    """One line for ``coordinator audit``: replies received, verified receipts, rejections."""
    got = [e for _, e in entries if e.direction == "in"]
    ok = sum(1 for e in got if e.decision == "received")
    verified = sum(1 for e in got if e.config.get("receipt_verified") is True)
    return (f"coordinator log: {ok} replies accepted ({verified} with a verified site receipt), "
            f"{len(got) - ok} rejected or error replies")


def coordinator_report(path: Path) -> dict[str, Any]:
    """The coordinator's log: like :func:`site_report`, but the egress statement (about a site's
    outgoing arrays) is replaced by the receipt statistics and no egress violations are listed."""
    entries = _readable_entries(path)
    summary = summarise_entries(entries, allowed={"": frozenset()})
    _check_side_files(path, summary)
    summary.update(violations=[], statement=coordinator_statement(entries))
    return _with_dp(summary, entries)


# ----------------------------------------------------------------------------- HTML report
def _row(i: int, e: AuditEntry, bad_line: int | None) -> str:
    arrays = ", ".join(f"{a.name} {a.dtype}{tuple(a.shape)} {a.nbytes} B" for a in e.arrays)
    cells = [str(i), e.time, e.run_id, e.peer, e.direction, e.msg_type, arrays or "-",
             json.dumps(e.config, sort_keys=True), e.decision, e.reason or "",
             e.entry_hash[:12], "yes" if e.signature else "no"]
    cls = ' class="bad"' if i == bad_line else ""
    cls = ' class="refused"' if not cls and e.decision == "refused" else cls
    return f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _readable_entries(path: Path) -> list[tuple[int, AuditEntry]]:
    """Entries up to the first unreadable line (the verification banner names that line)."""
    out: list[tuple[int, AuditEntry]] = []
    with contextlib.suppress(AuditError):
        out.extend(read_entries(path))
    return out


def render_html(path: Path, report: VerifyReport, summary: Mapping[str, Any]) -> str:
    """A standalone HTML page: verification banner, summary and a table of entries (escaped)."""
    esc = html.escape
    status = ("VERIFIED: chain intact" + (", signatures valid" if report.signatures_checked
                                          else " (signatures not checked)")
              if report.ok else f"FAILED: {report.reason}")
    head = ["#", "time", "run", "peer", "dir", "type", "arrays", "config", "decision", "reason",
            "hash", "signed"]
    rows = "\n".join(_row(i, e, report.first_bad_line) for i, e in _readable_entries(path))
    summ = esc(json.dumps({k: v for k, v in summary.items() if k != "statement"}, indent=2,
                          sort_keys=True))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Audit log {esc(path.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:90%}}
td,th{{border:1px solid #bbb;padding:3px 6px}}.ok{{color:#070}}.fail{{color:#b00}}
tr.bad{{background:#fcc}}tr.refused{{background:#ffe9b3}}</style></head><body>
<h1>Audit log: {esc(str(path))}</h1>
<p class="{'ok' if report.ok else 'fail'}"><b>{esc(status)}</b> &middot; {report.n_entries}
valid entries &middot; head {esc(report.head_hash)}</p>
<h2>Statement</h2><p>{esc(str(summary.get('statement', '')))}</p>
<h2>Summary</h2><pre>{summ}</pre>
<h2>Entries</h2><table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>
{rows}
</table></body></html>
"""
