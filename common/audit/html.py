"""The HTML page of ``audit --html``: readable in a 1280 px window.

The summary is a set of small tables (bytes per message type, refusals, releases under the
policy, DP, anchors), never raw JSON; each entry's arrays are listed by name when there are
few, else grouped by kind with counts and bytes (a FedAvg reply's hundreds of parameter names
read as ``weight x62, 1.2 MB``); long configs fold into a ``<details>``. Every value is
HTML-escaped.
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.audit.entries import AuditEntry, VerifyReport
from common.audit.keys import AuditError
from common.audit.log import by_kind, read_entries

MAX_NAMED = 6  # an entry with more arrays shows them grouped by kind
CSS = """body{font-family:system-ui,sans-serif;margin:16px;max-width:1240px;color:#222}
h1{font-size:20px;word-break:break-all}h2{font-size:16px;margin-top:22px}
table{border-collapse:collapse;font-size:12px;margin:4px 0 10px}
table.entries{width:100%;table-layout:fixed}
td,th{border:1px solid #bbb;padding:3px 5px;vertical-align:top;text-align:left;
overflow-wrap:anywhere}th{background:#eee}.ok{color:#070}.fail{color:#b00}
tr.bad{background:#fcc}tr.refused{background:#ffe9b3}tr.released{background:#e6f0ff}
details summary{cursor:pointer;color:#036}.num{text-align:right;white-space:nowrap}
p.statement{font-size:14px;padding:6px 8px;background:#f4f4f4;border-left:4px solid #888}"""
COLS = [("#", "3%"), ("time", "9%"), ("run", "7%"), ("peer", "6%"), ("dir", "3%"),
        ("type", "10%"), ("arrays", "20%"), ("config", "17%"), ("decision", "6%"),
        ("reason", "11%"), ("hash", "5%"), ("signed", "3%")]


def human_bytes(n: int | float) -> str:
    """``1234567`` -> ``1.2 MB`` (decimal units)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    esc = html.escape
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    attr = f' class="{cls}"' if cls else ""
    return (f"<table{attr}><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
            + body + "</table>")


def arrays_cell(e: AuditEntry) -> str:
    """An entry's arrays: names with dtype, shape and bytes, or counts and bytes by kind."""
    if not e.arrays:
        return "-"
    if len(e.arrays) <= MAX_NAMED:
        return "; ".join(f"{a.name} {a.dtype}{tuple(a.shape)} {human_bytes(a.nbytes)}"
                         for a in e.arrays)
    total = sum(a.nbytes for a in e.arrays)
    kinds = ", ".join(f"{k} x{v['count']} ({human_bytes(v['bytes'])})"
                      for k, v in by_kind(list(e.arrays)).items())
    return f"{len(e.arrays)} arrays, {human_bytes(total)}: {kinds}"


def _config_cell(config: Mapping[str, Any]) -> str:
    text = ", ".join(f"{k}={v}" for k, v in sorted(config.items()))
    if len(text) <= 160:
        return html.escape(text)
    return (f"<details><summary>{html.escape(text[:120])}...</summary>"
            f"{html.escape(text)}</details>")


def _row(i: int, e: AuditEntry, bad_line: int | None, released: set[str]) -> str:
    cells = [html.escape(c) for c in (str(i), e.time, e.run_id, e.peer, e.direction,
                                      e.msg_type, arrays_cell(e))]
    cells += [_config_cell(e.config)] + [html.escape(c) for c in (
        e.decision, e.reason or "", e.entry_hash[:12], "yes" if e.signature else "no")]
    cls = "bad" if i == bad_line else "refused" if e.decision == "refused" else (
        "released" if e.msg_type in released and e.direction == "out" and e.arrays else "")
    return (f'<tr class="{cls}">' if cls else "<tr>") + "".join(
        f"<td>{c}</td>" for c in cells) + "</tr>"


def _summary_tables(summary: Mapping[str, Any]) -> str:
    parts = [_table(["message type", "direction", "bytes"],
                    [(t, d, f"{b:,} ({human_bytes(b)})")
                     for t, per in sorted(summary.get("bytes", {}).items())
                     for d, b in sorted(per.items())])]
    refused = summary.get("refused_by_type", {})
    parts.append(f"<p>Refused: {int(summary.get('refused', 0))}"
                 + (" (" + ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(
                     refused.items())) + ")" if refused else "") + "</p>")
    rel = summary.get("released", [])
    if rel:
        parts.append("<h3>Released under policy</h3>" + _table(
            ["message type", "replies", "bytes", "runs", "arrays per reply", "by kind"],
            [(r["msg_type"], r["replies"], f"{r['bytes']:,} ({human_bytes(r['bytes'])})",
              ", ".join(r["runs"]), r["arrays_per_reply"],
              ", ".join(f"{k} x{v['count']} ({human_bytes(v['bytes'])})"
                        for k, v in r["kinds"].items())) for r in rel]))
    viol = summary.get("violations", [])
    if viol:
        parts.append("<h3 class=\"fail\">Violations</h3><ul>" + "".join(
            f"<li>{html.escape(str(v))}</li>" for v in viol[:50]) + "</ul>")
    return "".join(parts) + _extra_tables(summary)


def _extra_tables(summary: Mapping[str, Any]) -> str:
    parts = []
    if summary.get("dp"):
        parts.append("<h3>DP accounting</h3>" + _table(
            ["run", "noised slices", "ε", "δ", "σ (min)", "releases"],
            [(d["run_id"], d["slices"], f"{d['epsilon']:.4g}", f"{d['delta']:g}",
              f"{d['sigma']:g}", d["releases"]) for d in summary["dp"]]))
    a = summary.get("anchors")
    if a:
        parts.append("<h3>Anchors</h3>" + _table(
            ["peer log", "signer", "heads checked", "peer entries", "last anchored seq",
             "unanchored tail", "problems"],
            [(a["peer_log"], a["peer_signer"], a["heads_checked"], a["peer_entries"],
              a["last_anchored_seq"], a["unanchored_tail"], "; ".join(a["problems"]) or "none")]))
    if summary.get("recoveries"):
        parts.append("<h3>Recovered torn lines</h3>" + _table(
            ["line", "time", "side file", "bytes", "intact"],
            [(r["line"], r["time"], r["side_file"], r["torn_bytes"],
              "yes" if r.get("side_file_ok") else "NO") for r in summary["recoveries"]]))
    if summary.get("budget"):
        parts.append("<h3>Query budget</h3><pre>" + html.escape(
            "\n".join(summary["budget"])) + "</pre>")
    return "".join(parts)


def _entries(path: Path) -> list[tuple[int, AuditEntry]]:
    out: list[tuple[int, AuditEntry]] = []
    with contextlib.suppress(AuditError):
        out.extend(read_entries(path))
    return out


def render_html(path: Path, report: VerifyReport, summary: Mapping[str, Any]) -> str:
    """A standalone HTML page: verification banner, statements, summary tables and the
    entries (escaped; see the module docstring)."""
    esc = html.escape
    status = ("VERIFIED: chain intact" + (", signatures valid" if report.signatures_checked
                                          else " (signatures not checked)")
              if report.ok else f"FAILED: {report.reason}")
    released = {str(r["msg_type"]) for r in summary.get("released", [])}
    rows = "\n".join(_row(i, e, report.first_bad_line, released) for i, e in _entries(path))
    cols = "".join(f'<col style="width:{w}">' for _, w in COLS)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Audit log {esc(path.name)}</title><style>{CSS}</style></head><body>
<h1>Audit log: {esc(str(path))}</h1>
<p class="{'ok' if report.ok else 'fail'}"><b>{esc(status)}</b> &middot; {report.n_entries}
valid entries &middot; head {esc(report.head_hash[:16])}&hellip;</p>
<h2>Statement</h2><p class="statement">{esc(str(summary.get('statement', '')))}</p>
<p class="statement">{esc(str(summary.get('dp_statement', '')))}</p>
<h2>Summary</h2>{_summary_tables(summary)}
<h2>Entries</h2><table class="entries"><colgroup>{cols}</colgroup>
<tr>{''.join(f'<th>{h}</th>' for h, _ in COLS)}</tr>
{rows}
</table></body></html>
"""
