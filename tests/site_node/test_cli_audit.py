"""``site-node audit`` and ``site-node policy show`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.audit.keys import generate_keypair, load_private_key
from common.audit.log import AuditLog
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


# ----------------------------------------------------------------------------- audit CLI
def _audit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = site_main(["audit", *argv])
    return code, capsys.readouterr().out


def test_failed_verification_withholds_the_statement(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    log, pub = _log(tmp_path)
    log.write_text(log.read_text().replace('"peer":"coordinator"', '"peer":"other"', 1))
    code, out = _audit(["--log", str(log), "--pub", str(pub)], capsys)
    assert code == 1 and "No array other than teacher outputs" not in out
    assert "STATEMENT WITHHELD: the log did not verify (line 1: entry_hash mismatch" in out


def test_a_violation_fails_the_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log, pub = _log(tmp_path)
    AuditLog(log, load_private_key(tmp_path / "keys" / "site_a.key")).append(
        run_id="r1", peer="coordinator", direction="out", msg_type="query.teacher_outputs",
        arrays={"volume": np.zeros((8, 32, 32), np.float32)}, decision="sent")
    code, out = _audit(["--log", str(log), "--pub", str(pub)], capsys)
    assert code == 1 and "No array other than teacher outputs" not in out
    assert "line 3: query.teacher_outputs reply to coordinator carried ['volume']" in out


def test_unsigned_audit_fails_unless_waived(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    log, _ = _log(tmp_path)
    code, out = _audit(["--log", str(log)], capsys)
    assert code == 1 and "signatures NOT checked" in out
    assert "STATEMENT WITHHELD: signatures not checked" in out
    code, out = _audit(["--log", str(log), "--no-signatures"], capsys)
    assert code == 0 and "signatures NOT checked" in out
    assert "No array other than teacher outputs" in out
    with pytest.raises(SystemExit):
        site_main(["audit", "--log", str(log), "--no-signatures", "--pub", "x.pub"])


@pytest.mark.parametrize("mode", ["int8_probs", "downsample"])
def test_documented_compression_modes_pass(tmp_path: Path, mode: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from common.compress import CompressionConfig, compress_logits

    priv, pub = generate_keypair(tmp_path / "keys", "site_a")
    log = AuditLog(tmp_path / "egress.jsonl", load_private_key(priv))
    log.append(run_id="r1", peer="coordinator", direction="in", msg_type="query.teacher_outputs",
               arrays={"images": np.zeros((8, 1, 32, 32), np.float32)}, decision="received")
    payload = compress_logits(np.zeros((8, 2, 32, 32), np.float32), CompressionConfig(mode=mode))
    log.append(run_id="r1", peer="coordinator", direction="out", msg_type="query.teacher_outputs",
               arrays={**payload, "at_early": np.zeros((8, 16, 16), np.float16)})
    code, out = _audit(["--log", str(log.path), "--pub", str(pub)], capsys)
    assert code == 0 and "No array other than teacher outputs" in out
    strict = tmp_path / "policy.toml"  # a site policy allowing only fp16 logits and maps
    strict.write_text('[replies."query.teacher_outputs".arrays.logits]\n'
                      'dtypes = ["float16"]\nshape = ["n", 2, "side", "side"]\n'
                      '[replies."query.teacher_outputs".arrays.at_early]\n'
                      'dtypes = ["float16"]\nshape = ["n", "side/2", "side/2"]\n')
    code, out = _audit(["--log", str(log.path), "--pub", str(pub), "--policy", str(strict)],
                       capsys)
    assert code == 1 and f"carried ['{next(iter(payload))}']" in out


def test_default_policy_allows_exactly_the_teacher_outputs() -> None:
    from common.audit.log import TEACHER_OUTPUTS
    from site_node.policy import allowed_arrays, default_policy

    assert allowed_arrays(default_policy()) == TEACHER_OUTPUTS


def test_audit_reports_a_recovered_torn_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    log, pub = _log(tmp_path)
    with log.open("ab") as fh:
        fh.write(b'{"seq":3,"time":"2026-')  # power loss mid-append
    AuditLog(log, load_private_key(tmp_path / "keys" / "site_a.key"))  # the site restarts
    code, out = _audit(["--log", str(log), "--pub", str(pub)], capsys)
    assert code == 0 and "3 entries, hash chain OK" in out
    assert "recovered torn line: line 3" in out and "22 B moved to egress.jsonl.torn-" in out
    assert "intact" in out and "No array other than teacher outputs" in out
    next(tmp_path.glob("egress.jsonl.torn-*")).unlink()  # the torn bytes are gone: not clean
    code, out = _audit(["--log", str(log), "--pub", str(pub)], capsys)
    assert code == 1 and "MISSING OR ALTERED" in out and "STATEMENT WITHHELD" in out


def test_coordinator_audit_withholds_its_statement_on_failure(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator.cli import main as coord_main

    log, pub = _log(tmp_path)
    assert coord_main(["audit", "--log", str(log), "--pub", str(pub)]) == 0
    assert "coordinator log:" in capsys.readouterr().out
    log.write_text(log.read_text().splitlines()[1] + "\n")
    assert coord_main(["audit", "--log", str(log), "--pub", str(pub)]) == 1
    out = capsys.readouterr().out
    assert "coordinator log:" not in out and "STATEMENT WITHHELD" in out


def test_unwritable_html_report_is_one_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    log, pub = _log(tmp_path)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert site_main(["audit", "--log", str(log), "--pub", str(pub), "--html", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"site-node: error: {folder}: cannot write the HTML report (")
    assert "\n" not in err
    assert site_main(["audit", "--log", str(tmp_path), "--pub", str(pub)]) == 2
    assert capsys.readouterr().err.strip() == f"site-node: error: {tmp_path}: not a regular file"
