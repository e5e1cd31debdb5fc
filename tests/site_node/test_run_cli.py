"""``site-node --data ... --coordinator ... --name ...`` (start a SuperNode) and ``status``."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from site_node.cli import main
from tests._helpers import corrupted_copy, read_jsonl


def _cmd(out: str) -> list[str]:
    line = next(ln for ln in out.splitlines() if "flower-supernode" in ln)
    return shlex.split(line)


def _base(data: Path, tmp: Path) -> list[str]:
    return ["--data", str(data), "--coordinator", "127.0.0.1:8000", "--name", "site_a",
            "--state-dir", str(tmp / "state"), "--teacher-dir", str(tmp / "teacher"), "--dry-run"]


def test_dry_run_with_tls_and_node_auth(tiny_sites: dict, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.crt").write_text("CA")
    (tmp_path / "site.key").write_text("KEY")
    argv = _base(tiny_sites["site_a"], tmp_path) + [
        "--certs", str(tmp_path / "certs"), "--key", str(tmp_path / "site.key")]
    assert main(argv) == 0
    cap = capsys.readouterr()  # the command on stdout, the log lines on stderr
    out = cap.out
    cmd = _cmd(out)
    assert Path(cmd[0]).name == "flower-supernode" and "--insecure" not in cmd
    assert cmd[cmd.index("--root-certificates") + 1] == str(tmp_path / "certs" / "ca.crt")
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(tmp_path / "site.key")
    assert cmd[cmd.index("--superlink") + 1] == "127.0.0.1:8000"
    assert cmd[cmd.index("--port") + 1] == "9094"
    conf = cmd[cmd.index("--node-config") + 1]
    assert f'data-path="{tiny_sites["site_a"]}"' in conf and 'site-name="site_a"' in conf
    assert f'teacher-dir="{tmp_path / "teacher"}"' in conf
    assert f'state-dir="{tmp_path / "state"}"' in conf
    assert "data OK: 12 cases" in cap.err and "no best.pt yet" in cap.err
    assert not (tmp_path / "state" / "runs.jsonl").exists()  # a dry run records nothing


def test_dry_run_insecure_with_explicit_run(tiny_sites: dict, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", *_base(tiny_sites["site_b"], tmp_path), "--insecure", "--port", "9200"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    cmd = _cmd(cap.out)
    assert "--insecure" in cmd and "--root-certificates" not in cmd
    assert cmd[cmd.index("--port") + 1] == "9200"
    assert "WARNING" in cap.err and "--insecure: traffic to the coordinator" in cap.err


def test_dry_run_audit_key_compression_host_and_ca_file(
        tiny_sites: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The flags deploy/entrypoints/site.sh passes: the egress log is signed in every mode."""
    (tmp_path / "ca.pem").write_text("CA")
    (tmp_path / "audit.key").write_text("KEY")
    argv = _base(tiny_sites["site_a"], tmp_path) + [
        "--certs", str(tmp_path / "ca.pem"), "--audit-key", str(tmp_path / "audit.key"),
        "--compression", "int8_probs", "--host", "0.0.0.0"]
    assert main(argv) == 0
    cmd = _cmd(capsys.readouterr().out)
    assert cmd[cmd.index("--root-certificates") + 1] == str(tmp_path / "ca.pem")
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    conf = cmd[cmd.index("--node-config") + 1]
    assert f'audit-key="{tmp_path / "audit.key"}"' in conf and 'compression="int8_probs"' in conf
    argv[argv.index(str(tmp_path / "audit.key"))] = str(tmp_path / "none.key")
    assert main(argv) == 2
    assert f"{tmp_path / 'none.key'}: audit key not found" in capsys.readouterr().err


def test_state_dir_default_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import site_node.run as run

    monkeypatch.setenv("FEDMTKD_STATE_DIR", "/somewhere/else")
    assert importlib.reload(run).DEFAULT_STATE_DIR == Path("~/.fedmtkd/site-node")


def test_missing_ca_and_bad_address_are_one_line_errors(
        tiny_sites: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _base(tiny_sites["site_a"], tmp_path) + ["--certs", str(tmp_path / "nocerts")]
    assert main(argv) == 2
    assert f"{tmp_path / 'nocerts' / 'ca.crt'}: CA certificate not found" in capsys.readouterr().err
    argv = _base(tiny_sites["site_a"], tmp_path) + ["--insecure"]
    argv[argv.index("127.0.0.1:8000")] = "localhost"
    assert main(argv) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_invalid_data_exits_2_naming_the_file(tiny_sites: dict, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    bad = corrupted_copy(tiny_sites["site_a"], data, "labelsTr", 3, b"not a nifti file")
    assert main(_base(data, tmp_path) + ["--insecure"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("site-node: error:") and str(bad) in err and len(err.splitlines()) == 1
    bad.unlink()
    assert main(_base(data, tmp_path) + ["--insecure"]) == 2
    assert "has no label" in capsys.readouterr().err
    assert main(_base(tmp_path / "teacher", tmp_path) + ["--insecure"]) == 2
    assert f"{tmp_path / 'teacher'}: dataset folder not found" in capsys.readouterr().err


def test_start_records_an_event_then_execs(tiny_sites: dict, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import site_node.run as run

    seen: list[list[str]] = []
    monkeypatch.setattr(run.os, "execve", lambda exe, argv, env: seen.append(argv) or 0)
    warm: list[Path] = []
    monkeypatch.setattr("site_node.warm.spawn", lambda state, env: warm.append(state))
    argv = [a for a in _base(tiny_sites["site_a"], tmp_path) if a != "--dry-run"]
    assert main([*argv, "--insecure"]) == 1  # only reached because execv was stubbed
    assert Path(seen[0][0]).name == "flower-supernode"
    assert warm == [tmp_path / "state"]  # the warm ClientApp server starts beside it
    (event,) = read_jsonl(tmp_path / "state" / "runs.jsonl")
    assert event["site"] == "site_a" and event["tls"] is False and event["data"]["cases"] == 12


def test_status_on_a_trained_teacher(tiny_sites: dict, tiny_teachers: dict, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from site_node.run import record_event

    teacher, state = tiny_teachers["site_c"], tmp_path / "state"
    card = json.loads((teacher / "teacher.json").read_text())
    record_event(state, {"event": "start", "time": 0, "site": "site_c", "tls": True,
                         "coordinator": "10.0.0.5:8000", "port": 9094, "teacher_dir": str(teacher),
                         "data": {"path": str(tiny_sites["site_c"])}})
    audit = state / "audit" / "egress.jsonl"
    audit.parent.mkdir(parents=True)
    audit.write_text("".join(json.dumps({"msg_type": t, "decision": d}) + "\n"
                             for t, d in [("train", "sent"), ("query", "sent"),
                                          ("query", "refused")]))
    capsys.readouterr()
    assert main(["status", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "data: 12 cases" in out and "teacher: tiny_unet" in out
    assert f"val Dice {card['val_dice']:.4f}" in out
    assert f"test Dice {card['test']['dice_mean']:.4f}" in out
    assert "runs: 1 start(s)" in out and "site site_c -> 10.0.0.5:8000 (TLS" in out
    assert "audit: 3 entries" in out and "query refused: 1" in out
    assert main(["status", "--state-dir", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    assert "runs: no start recorded" in out and "teacher: none yet" in out


def test_supernode_env_puts_the_pinning_shim_first(tmp_path: Path) -> None:
    from site_node.run import supernode_env

    env = supernode_env(tmp_path / "state")
    found = shutil.which("flwr-clientapp", path=env["PATH"])
    assert found == str(tmp_path / "state" / "bin" / "flwr-clientapp")
    assert "site_node.pinned_app" in Path(found).read_text()
