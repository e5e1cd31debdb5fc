"""``coordinator distill`` against a running SuperLink, and a site killed mid-run.

The end-to-end test runs ``coordinator simulate --insecure``: the compose topology through the
container entrypoints, whose coordinator drives the run with ``coordinator distill --superlink
...`` (the path hospital deployments use), and SIGKILLs site_c's SuperNode as soon as the
coordinator has its train reply: site_c must be dropped during the query round and the run
finish with 2 teachers (the experiment opts into 2 sites). Without that opt-in a site that cannot
start fails ``coordinator simulate`` naming it; ports taken between the plan and the start are
replaced by fresh ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from coordinator.cli import main
from tests._helpers import SITES, federated_toml


def _distill(config: Path, *extra: str) -> list[str]:
    return ["distill", "--config", str(config), *extra]


def _unread_config(tmp: Path) -> Path:
    """``federated_toml`` with every data and teacher path at ``tmp``: only the CLI runs."""
    return federated_toml({"proxy": tmp / "p", **dict.fromkeys(SITES, tmp)},
                          dict.fromkeys(SITES, tmp), tmp)


def test_print_command_writes_the_flwr_config(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator.federated_cli import FEDERATION
    from coordinator.topology.env import APP_DIR

    config = _unread_config(tmp_path)
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.crt").write_text("CA")
    argv = _distill(config, "--superlink", "10.1.2.3:8000", "--certs", str(tmp_path / "certs"),
                    "--min-sites", "2", "--no-train", "--workdir", str(tmp_path / "w"),
                    "--print-command", "--epochs", "3")
    assert main(argv) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"FLWR_HOME={tmp_path / 'w' / 'flwr_home'} ")
    assert f" run {APP_DIR} {FEDERATION} --stream --run-config " in out
    conn = (tmp_path / "w" / "flwr_home" / "config.toml").read_text()
    assert f'[superlink.{FEDERATION}]\naddress = "10.1.2.3:8000"' in conn
    assert f'root-certificates = "{tmp_path / "certs" / "ca.crt"}"' in conn
    rc = (tmp_path / "w" / "run_config.toml").read_text()
    assert "min-sites = 2" in rc and "train = false" in rc and "expected-sites = 3" in rc
    assert f'config-path = "{tmp_path / "w" / "experiment.yaml"}"' in rc  # --epochs: a copy
    assert "epochs: 3" in (tmp_path / "w" / "experiment.yaml").read_text()


def test_run_config_file_overrides_the_flags(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """What deploy/entrypoints/coordinator.sh passes: --run-config FILE, --certs CA file."""
    config = _unread_config(tmp_path)
    (tmp_path / "ca.pem").write_text("CA")
    (tmp_path / "rc.toml").write_text("min-sites = 2\ntrain = false\nchunk-size = 48\n")
    argv = _distill(config, "--certs", str(tmp_path / "ca.pem"), "--min-sites", "3",
                    "--run-config", str(tmp_path / "rc.toml"), "--workdir", str(tmp_path / "w"),
                    "--print-command")
    assert main(argv) == 0
    rc = (tmp_path / "w" / "run_config.toml").read_text()
    assert "min-sites = 2" in rc and "train = false" in rc and "chunk-size = 48" in rc
    conn = (tmp_path / "w" / "flwr_home" / "config.toml").read_text()
    assert f'root-certificates = "{tmp_path / "ca.pem"}"' in conn
    capsys.readouterr()
    (tmp_path / "rc.toml").write_text("min_sites = 2\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown keys ['min_sites']" in err and len(err.strip().splitlines()) == 1


def test_unreachable_superlink_and_missing_ca_are_one_line_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator.topology.simulate import free_port

    config = _unread_config(tmp_path)
    address = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    assert main(_distill(config, "--superlink", address, "--insecure")) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot reach the SuperLink at {address}" in err and len(err.splitlines()) == 1
    assert time.monotonic() - t0 < 30
    assert main(_distill(config, "--superlink", address, "--certs", str(tmp_path / "no"))) == 2
    assert f"{tmp_path / 'no' / 'ca.crt'}: CA certificate not found" in capsys.readouterr().err
    assert main(_distill(config, "--superlink", "nowhere", "--insecure")) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def _kill_when(log: Path, needle: str, proc: subprocess.Popen, stop: threading.Event,
               killed: list[float]) -> None:
    """SIGKILL ``proc``'s process group once ``needle`` appears in ``log``."""
    while not stop.wait(0.2):
        if log.is_file() and needle in log.read_text(errors="replace"):
            os.killpg(proc.pid, signal.SIGKILL)
            killed.append(time.monotonic())
            return


@pytest.mark.slow
def test_a_killed_site_is_dropped_and_the_run_completes(
        tiny_sites: dict, tiny_teachers: dict, tmp_path: Path) -> None:
    from coordinator.topology.simulate import Processes, SiteNode, simulate_outcome

    config = federated_toml(tiny_sites, tiny_teachers, tmp_path)
    work = tmp_path / "work"
    stop, killed = threading.Event(), []  # type: ignore[var-annotated]

    def watch(procs: Processes) -> None:
        threading.Thread(target=_kill_when, daemon=True, args=(
            work / "logs" / "coordinator.log", "site_c: teacher ready",
            procs.named["site-site_c"], stop, killed)).start()

    try:
        outcome = simulate_outcome([SiteNode(n, tiny_sites[n], tiny_teachers[n]) for n in SITES],
                                   config, work, {"timeout": 240.0, "min-sites": 2,
                                                  "chunk-size": 48}, timeout=480.0,
                                   insecure=True, on_start=watch)
    finally:
        stop.set()
    log = (work / "logs" / "coordinator.log").read_text(errors="replace")
    assert killed, "site_c never reported its teacher: " + log[-3000:]
    assert outcome.rc == 0 and outcome.failure == "", log[-3000:]
    assert "federated results:" in log  # printed by `coordinator distill`
    status = json.loads((tmp_path / "exp" / "run_status.json").read_text())
    assert status["ok"] and status["required"] == 2
    assert {n: r["state"] for n, r in status["sites"].items()} == {
        "site_a": "scored", "site_b": "scored", "site_c": "dropped"}
    assert "dropping site_c" in log
    a, b, c = outcome.summary  # every expected site: what the run and its process say
    assert a.startswith("site_a: scored") and "process running" in a
    assert b.startswith("site_b: scored")
    assert c.startswith("site_c: dropped (") and c.endswith("exited with -9 before the run ended")
    res = json.loads((tmp_path / "exp" / "results.json").read_text())
    (row,) = res["rows"]
    assert row["teachers"] == ["site_a", "site_b"] and set(row["sites"]) == {"site_a", "site_b"}
    assert len(list((tmp_path / "exp" / "teacher_cache").glob("site_*/meta.json"))) == 2
    rc_file = (work / "coordinator" / "run_config.toml").read_text()
    assert "min-sites = 2" in rc_file and "chunk-size = 48" in rc_file


def test_a_run_past_its_timeout_is_torn_down(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    from coordinator.federated_cli import launch

    t0 = time.monotonic()
    cmd = ["/bin/sh", "-c", "echo Successfully started run 42; exec sleep 60"]
    assert launch(cmd, tmp_path, 2.0) == 124
    assert time.monotonic() - t0 < 30
    cap = capsys.readouterr()
    assert "Successfully started run 42" in cap.out
    assert "no result after 2 s" in caplog.text and "stop run 42" in caplog.text


def test_sigterm_stops_the_flwr_run_it_started(tmp_path: Path) -> None:
    """coordinator.sh's teardown SIGTERMs ``coordinator distill``; ``flwr run`` (its own
    session, out of reach of that group signal) must not survive it."""
    from coordinator.federated_cli import launch

    pidfile, before = tmp_path / "pid", signal.getsignal(signal.SIGTERM)
    cmd = ["/bin/sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"]
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with pytest.raises(SystemExit) as exc:
            launch(cmd, tmp_path, 30.0)
    finally:
        timer.cancel()
    assert exc.value.code == 128 + signal.SIGTERM
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.slow
def test_a_site_that_cannot_start_fails_the_run_naming_it(
        tiny_sites: dict, tiny_teachers: dict, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """site_c's data folder is missing: its entrypoint exits 2 at start; ``coordinator
    simulate`` stops everything and exits 1 with one line naming site_c and its log, and the
    summary lists every site."""
    config = federated_toml({**tiny_sites, "site_c": tmp_path / "no_data"}, tiny_teachers,
                            tmp_path)
    work = tmp_path / "work"
    argv = ["simulate", "--sites", "3", "--config", str(config), "--workdir", str(work),
            "--insecure", "--timeout", "120", "--round-timeout", "60"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    site_log = work / "logs" / "site-site_c.log"
    assert err.strip().splitlines()[-1] == (f"coordinator simulate: site site_c exited with 2 "
                                            f"before the run ended; see {site_log}")
    assert "no dataset in" in site_log.read_text()
    summary = out[out.index("sites:\n"):].splitlines()[1:]
    assert [line.split(":")[0].strip() for line in summary] == list(SITES)
    assert summary[2].endswith("exited with 2 before the run ended")
    assert "process running" in summary[0] or "process starting" in summary[0]


@pytest.mark.slow
def test_ports_taken_before_the_start_are_replaced(tiny_sites: dict, tiny_teachers: dict,
                                                   tmp_path: Path) -> None:
    """The plan gives the SuperLink and site_c ports this test already listens on (what a
    race with another process looks like): both are started again on fresh ports, and both
    SuperNodes (site_a, site_c) connect."""
    import socket

    from coordinator.topology.env import base_env
    from coordinator.topology.simulate import SiteNode, make_plan, site_watch
    from coordinator.topology.supervisor import Processes, allocate_ports, start_topology

    config = federated_toml(tiny_sites, tiny_teachers, tmp_path)
    taken = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    link_port, c_port = (s.getsockname()[1] for s in taken)
    nodes = [SiteNode(n, tiny_sites[n], tiny_teachers[n]) for n in ("site_a", "site_c")]
    plan = make_plan(nodes, config, tmp_path, {}, 60.0, insecure=True,
                     ports=lambda n: (link_port, *allocate_ports(n - 2), c_port))
    procs = Processes(tmp_path / "logs", base_env(), tmp_path)
    link_log = tmp_path / "logs" / "superlink.log"
    try:
        plan = start_topology(procs, plan)
        watch = site_watch(procs, plan, 2)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (
                not watch.all_healthy()
                or link_log.read_text(errors="replace").count("Activated node_id") < 2):
            assert watch.step() is None
            time.sleep(0.5)
    finally:
        procs.stop_all()
        for s in taken:
            s.close()
    logs = tmp_path / "logs"
    assert link_log.read_text(errors="replace").count("Activated node_id") == 2
    assert plan.superlink_port != link_port and plan.dial_port == plan.superlink_port
    assert "address already in use" in (logs / "superlink.1.log").read_text()
    site_a, site_c = watch.sites
    assert (site_c.name, site_c.restarts) == ("site_c", 1) and site_c.port != c_port
    assert "address already in use" in (logs / "site-site_c.1.log").read_text()
    assert site_a.restarts == 0 and not (logs / "site-site_a.1.log").exists()
