"""What ``site-node audit`` and ``coordinator audit`` report: the log summary plus DP accounting.

:mod:`common.audit.log` (the signed log) and :mod:`common.audit.dp` (the privacy maths) do not
import each other; this module combines them. A report is the dict of
:func:`common.audit.log.summarise_log`
(``entries``, ``bytes``, ``refused``, ``refused_by_type``, ``violations``, ``statement``) with
``dp`` (:func:`common.audit.dp.dp_accounting`, one row per noised run) appended;
:func:`common.audit.html.render_html` turns a verification result and a report into a
standalone page.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from common.audit.dp import dp_accounting
from common.audit.entries import AuditEntry, VerifyReport
from common.audit.keys import AuditError
from common.audit.log import TEACHER_OUTPUTS, read_entries, summarise_entries

__all__ = ["Report", "audit_passed", "coordinator_report", "dp_statement", "final_statement",
           "site_report"]

Report = Callable[[Path], dict[str, Any]]


def _with_dp(summary: dict[str, Any], entries: list[tuple[int, AuditEntry]],
             replies: tuple[str, str] = ("out", "sent")) -> dict[str, Any]:
    summary["dp"] = dp_accounting([e for _, e in entries])
    summary["dp_statement"] = dp_statement(entries, summary["dp"], summary.get("released", []),
                                           replies)
    return summary


def dp_statement(entries: list[tuple[int, AuditEntry]], rows: list[dict[str, Any]],
                 released: list[dict[str, Any]] | None = None,
                 replies: tuple[str, str] = ("out", "sent")) -> str:
    """The differential-privacy guarantee of what this log released, always stated: ``no DP
    noise: ε = ∞`` when any reply left without noise (the default), else the accountant's ε
    at δ over every noised slice (the all-runs row when there are several runs). ``replies``:
    the (direction, decision) of the replies in this log (a coordinator's: received)."""
    sent = [e for _, e in entries if (e.direction, e.decision) == replies and e.arrays]
    plain = [e for e in sent if not float(e.config.get("noise_sigma") or 0.0) > 0]
    weights = sum(int(r["replies"]) for r in released or [])
    if not rows:
        what = (f" ({len(plain)} replies with arrays {replies[1]} without noise)" if plain
                else "")
        return f"DP: no DP noise: ε = ∞{what}"
    total = rows[-1]
    eps = "∞" if total["epsilon"] == float("inf") else f"{total['epsilon']:.4g}"
    text = (f"DP: ε = {eps} at δ = {total['delta']:g} over {total['slices']} noised slices "
            f"(σ >= {total['sigma']:g}, {total['accountant']})")
    if plain:
        of_them = f", {weights} of them model weights" if weights else ""
        text = (f"DP: no DP guarantee overall: ε = ∞ ({len(plain)} replies with arrays "
                f"{replies[1]} without noise{of_them}); the noised replies alone: {text[4:]}")
    return text


def _check_side_files(path: Path, summary: dict[str, Any]) -> None:
    """Add ``side_file_ok`` to each recovery: the side file exists and has the logged sha256."""
    for r in summary.get("recoveries", []):
        name = str(r["side_file"])
        side = path.parent / name
        r["side_file_ok"] = Path(name).name == name and side.is_file() and (
            hashlib.sha256(side.read_bytes()).hexdigest() == r["torn_sha256"])


def site_report(path: Path, allowed: Mapping[str, frozenset[str]] = TEACHER_OUTPUTS,
                releases: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A site's log: bytes, refusals, recovered torn lines, the egress statement (arrays named in
    ``allowed`` per message type only: the teacher outputs, or the site policy's names; replies
    of the ``releases`` types within their byte cap are "released under policy") and DP.
    Only the readable entries are summarised (the verification names the first bad line)."""
    entries = _readable_entries(path)
    summary = summarise_entries(entries, allowed, releases)
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
    return _with_dp(summary, entries, ("in", "received"))


def _readable_entries(path: Path) -> list[tuple[int, AuditEntry]]:
    """Entries up to the first unreadable line (the verification banner names that line)."""
    out: list[tuple[int, AuditEntry]] = []
    with contextlib.suppress(AuditError):
        out.extend(read_entries(path))
    return out
