"""``site-node status``: what this node has done, from files it keeps locally.

Shows the data summary (re-checked), the teacher card (architecture, val/test Dice), the last
SuperNode starts from ``<state-dir>/runs.jsonl`` and the entry counts of the egress audit log
``<state-dir>/audit/egress.jsonl`` when it exists. Nothing is contacted over the network.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from site_node.run import DEFAULT_STATE_DIR, EVENTS


def add_status_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``site-node status``."""
    p.add_argument("--state-dir", dest="state_dir", type=Path, default=DEFAULT_STATE_DIR,
                   help="this node's run history and egress audit log")
    p.add_argument("--teacher-dir", dest="teacher_dir", type=Path,
                   help="teacher run folder (default: the last start's, else STATE_DIR/teacher)")
    p.add_argument("--data", type=Path, help="dataset folder (default: the last start's)")
    p.add_argument("--last", type=int, default=5, help="how many starts to list")
    p.add_argument("--policy", type=Path,
                   help="egress policy of this site (its query budget caps; default built-in)")


def read_events(state_dir: Path) -> list[dict[str, Any]]:
    """All start events (oldest first); unreadable lines are skipped."""
    path = state_dir / EVENTS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def data_lines(data: Path | None) -> list[str]:
    """One line summarising the dataset, or why it cannot be read."""
    from common.data.errors import DataError
    from site_node.run import validate_data

    if data is None:
        return ["data: unknown (no start recorded; pass --data)"]
    try:
        s = validate_data(data)
    except DataError as exc:
        return [f"data: PROBLEM: {exc}"]
    return [f"data: {s['cases']} cases ({s['dataset']}, {s['modality']}) in {s['path']}"]


def _num(value: Any) -> float:
    """A card number; JSON null (no held-out score) reads as NaN."""
    return float("nan") if value is None else float(value)


def teacher_lines(teacher_dir: Path) -> list[str]:
    """The serving teacher card's key facts, or a note that there is no trained teacher yet."""
    from site_node.teacher_versions import serving_dir

    teacher_dir = serving_dir(teacher_dir)
    from common.data.teacher_card import TeacherCard

    card = TeacherCard.read(teacher_dir, missing_ok=True)
    if card is None:
        return [f"teacher: none yet in {teacher_dir} (trained on the coordinator's train message)"]
    given = card.model_fields_set  # keys the file has ('?' for the others, as before)
    test = card.test or {}  # None: no held-out cases (small_site = "train_on_all")
    lines = [f"teacher: {card.architecture if 'architecture' in given else '?'} "
             f"({card.params if card.params is not None else 0:,} params) in {teacher_dir}",
             f"  val Dice {_num(card.val_dice):.4f} "
             f"(best epoch {card.best_epoch if 'best_epoch' in given else '?'}), test Dice "
             f"{_num(test.get('dice_mean')):.4f} on {int(test.get('n', 0))} cases"]
    return lines + [f"  trained {card.created if 'created' in given else '?'}"]


def run_lines(events: list[dict[str, Any]], last: int) -> list[str]:
    """The last ``last`` SuperNode starts."""
    if not events:
        return ["runs: no start recorded"]
    lines = [f"runs: {len(events)} start(s); last {min(last, len(events))}:"]
    for e in events[-last:]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(e.get("time", 0))))
        tls = "TLS" if e.get("tls") else "INSECURE"
        lines.append(f"  {when}  site {e.get('site', '?')} -> {e.get('coordinator', '?')} "
                     f"({tls}, port {e.get('port', '?')})")
    return lines


def audit_lines(log: Path) -> list[str]:
    """Entry counts of the egress audit log by message type and decision."""
    pub = log.parent / "site.pub"
    key_line = [f"  audit public key (give to the coordinator): {pub}"] if pub.is_file() else []
    if not log.is_file():
        return [f"audit: no log yet ({log})", *key_line]
    counts: Counter[str] = Counter()
    n = 0
    for line in log.read_text(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            counts["unreadable"] += 1
            continue
        n += 1
        counts[f"{e.get('msg_type', '?')} {e.get('decision', e.get('direction', '?'))}"] += 1
    parts = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    return [f"audit: {n} entries in {log}" + (f" ({parts})" if parts else ""),
            f"  verify with: site-node audit --log {log} --pub {pub}", *key_line]


def status_lines(state_dir: Path, teacher_dir: Path | None, data: Path | None,
                 last: int = 5, policy: Path | None = None) -> list[str]:
    """Every line of ``site-node status``."""
    from site_node.budget import budget_lines
    from site_node.policy import load_policy

    events = read_events(state_dir)
    latest = events[-1] if events else {}
    if teacher_dir is None:
        teacher_dir = Path(latest.get("teacher_dir") or state_dir / "teacher")
    if data is None and isinstance(latest.get("data"), dict):
        data = Path(latest["data"]["path"])
    return [f"state: {state_dir}", *data_lines(data), *teacher_lines(teacher_dir),
            *run_lines(events, last), *audit_lines(state_dir / "audit" / "egress.jsonl"),
            *budget_lines(state_dir, load_policy(policy))]


def main_status(args: argparse.Namespace) -> int:
    """Print the status report; always 0 (problems are reported in the text)."""
    state = args.state_dir.expanduser()
    print("\n".join(status_lines(state, args.teacher_dir, args.data, args.last,
                                  getattr(args, "policy", None))))
    return 0
