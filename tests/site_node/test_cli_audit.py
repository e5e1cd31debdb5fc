"""``site-node audit`` and ``site-node policy show`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.audit import AuditLog, generate_keypair, load_private_key
from site_node.cli import main as site_main


def _log(tmp_path: Path) -> tuple[Path, Path]:
    priv, pub = generate_keypair(tmp_path / "keys", "site_a")
    log = AuditLog(tmp_path / "egress.jsonl", load_private_key(priv))
    imgs = np.zeros((8, 1, 32, 32), np.float32)
    log.append(run_id="r1", peer="coordinator", direction="in", msg_type="query.teacher_outputs",
               arrays={"images": imgs}, decision="received")
    log.append(run_id="r1", peer="coordinator", direction="out", msg_type="query.teacher_outputs",
               arrays={"logits": np.zeros((8, 2, 32, 32), np.float16),
                       "rc_early": np.zeros(8, np.float32)}, decision="sent")
    return tmp_path / "egress.jsonl", pub


def test_audit_ok_reports_bytes_and_statement(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    log, pub = _log(tmp_path)
    html = tmp_path / "report.html"
    assert site_main(["audit", "--log", str(log), "--pub", str(pub), "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert "2 entries, hash chain OK; signatures checked" in out
    assert f"out {8 * 2 * 32 * 32 * 2 + 8 * 4:,} B" in out  # fp16 logits + fp32 rc
    assert "No array other than teacher outputs" in out
    assert "<html" in html.read_text().lower()


def test_audit_detects_an_edited_entry(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    log, pub = _log(tmp_path)
    lines = log.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["arrays"][0]["nbytes"] = 1
    log.write_text(lines[0] + "\n" + json.dumps(entry) + "\n")
    assert site_main(["audit", "--log", str(log), "--pub", str(pub)]) == 1
    assert "line 2" in capsys.readouterr().out


def test_policy_show_prints_allowlist(capsys: pytest.CaptureFixture[str]) -> None:
    assert site_main(["policy", "show"]) == 0
    out = capsys.readouterr().out
    assert "reply to 'train':" in out and "arrays: NONE" in out
