"""The warm ClientApp server (:mod:`site_node.warm`): argv, environment, cwd and stdio reach the
forked child, its exit code and signals are relayed, and a missing server means fallback."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from site_node.warm import run_via_server, socket_path

ROOT = Path(__file__).resolve().parents[2]
SHIM = ("import sys; from site_node.warm import run_via_server; "
        "code = run_via_server(sys.argv[2:], sys.argv[1]); "
        "print('fallback') if code is None else sys.exit(code)")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "warm.sock"
    proc = subprocess.Popen([sys.executable, "-m", "tests.site_node._warm_target", str(path)],
                            cwd=ROOT)
    try:
        for _ in range(200):
            if path.exists():
                break
            time.sleep(0.05)
        assert path.exists(), "warm server did not start"
        yield path
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _shim(path: Path, *argv: str, **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, "WARM_TEST": "from-the-shim", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", SHIM, str(path), *argv], text=True, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def test_argv_env_cwd_and_stdio_reach_the_child_and_the_exit_code_comes_back(
        server: Path, tmp_path: Path) -> None:
    assert stat.S_IMODE(server.stat().st_mode) == 0o600
    proc = _shim(server, "7", "--token", "abc", cwd=tmp_path)
    out, err = proc.communicate("hello\n", timeout=30)
    assert proc.returncode == 7
    assert out.strip() == f"argv=--token abc stdin=hello env=from-the-shim cwd={tmp_path}"
    assert err.strip() == "to stderr"
    proc = _shim(server, "0", "again", cwd=tmp_path)  # the server serves more than one
    out, _ = proc.communicate("x\n", timeout=30)
    assert proc.returncode == 0 and out.startswith("argv=again stdin=x ")


def test_sigterm_to_the_shim_reaches_the_child(server: Path) -> None:
    proc = _shim(server, "sleep")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "sleeping"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM  # the child died of the forwarded SIGTERM


def test_no_server_means_fallback(tmp_path: Path) -> None:
    assert run_via_server(["x"], str(tmp_path / "absent.sock")) is None
    dead = tmp_path / "dead.sock"  # a stale socket file: connection refused
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    s.close()
    assert run_via_server(["x"], str(dead)) is None
    assert run_via_server(["x"], "") is None
    proc = _shim(tmp_path / "absent.sock", "3")
    out, _ = proc.communicate("", timeout=30)
    assert proc.returncode == 0 and out.strip() == "fallback"


def test_socket_path_stays_within_the_unix_limit(tmp_path: Path) -> None:
    assert socket_path(tmp_path) == tmp_path.resolve() / "warm.sock"
    deep = tmp_path / ("d" * 120)
    far = socket_path(deep)
    assert far.name == "warm.sock" and len(os.fsencode(far)) <= 107 and far.parent.is_dir()
    far.parent.rmdir()


def test_poll_interval_wraps_the_exact_supernode_command(
        tiny_sites: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shlex

    from site_node.cli import main

    base = ["--data", str(tiny_sites["site_a"]), "--coordinator", "127.0.0.1:8000", "--name",
            "site_a", "--state-dir", str(tmp_path / "state"), "--insecure", "--dry-run"]
    assert main(base) == 0
    plain = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(plain[0]).name == "flower-supernode"
    assert main([*base, "--poll-interval", "0.2"]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert cmd[:6] == [sys.executable, "-m", "site_node.supernode", "--poll-interval", "0.2",
                       "--"]
    assert cmd[6:] == plain  # Flower's own command, unchanged, after the wrapper
    assert main([*base, "--poll-interval", "0"]) == 2
    assert "--poll-interval: poll interval must be 0.01..60.0 s" in capsys.readouterr().err


def test_capped_time_caps_only_sleep() -> None:
    import flwr.supernode.start_client_internal as sci

    from site_node.supernode import SUPEREXEC_POLL_ENV, CappedTime, install_poll_cap

    capped = CappedTime(0.01)
    t0 = time.perf_counter()
    capped.sleep(3)
    assert time.perf_counter() - t0 < 2.5 and capped.time is time.time  # type: ignore[attr-defined]
    real = sci.time
    try:
        install_poll_cap(0.25)
        assert isinstance(sci.time, CappedTime) and sci.time.cap == 0.25
        assert os.environ[SUPEREXEC_POLL_ENV] == "0.25"
    finally:
        sci.time = real  # type: ignore[assignment]
        os.environ.pop(SUPEREXEC_POLL_ENV, None)


@pytest.mark.slow
def test_the_shim_runs_the_pinned_clientapp_in_a_warm_child(tmp_path: Path) -> None:
    """The real server (``site_node.warm_server``: Flower, torch and the app preloaded) and the
    real shim: ``flwr-clientapp --help`` answers from a forked child, and the server exits
    once its parent is gone."""
    from site_node.pinned_app import write_shim

    sock = tmp_path / "warm.sock"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys; p = subprocess.Popen([sys.executable, '-m', "
        f"'site_node.warm_server', '--socket', {str(sock)!r}, '--parent-pid', "
        "str(__import__('os').getpid())]); print(p.pid, flush=True); "
        "sys.stdin.readline()")], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert parent.stdout is not None and parent.stdin is not None
    server_pid = int(parent.stdout.readline())
    for _ in range(1200):
        if sock.exists():
            break
        time.sleep(0.05)
    shim = write_shim(tmp_path / "bin")
    out = subprocess.run([str(shim), "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "FEDMTKD_WARM_SOCKET": str(sock)})
    assert out.returncode == 0 and "--runtime-api-address" in out.stdout
    assert "unavailable" not in out.stderr  # served warm, not cold
    parent.stdin.close()  # the "SuperNode" exits: the server follows
    parent.wait(timeout=30)
    for _ in range(100):
        if not sock.exists():
            break
        time.sleep(0.1)
    assert not sock.exists()
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(server_pid, 0)
            time.sleep(0.1)


def test_a_server_with_threads_does_not_serve(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from site_node.warm import serve

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # serve() sets it: restored after the test

    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()  # pytest's process now has a second thread: forking it would be unsafe
    try:
        serve(tmp_path / "warm.sock", lambda argv: None, modules=())
    finally:
        stop.set()
        worker.join()
    assert not (tmp_path / "warm.sock").exists()
    assert "NOT started: " in caplog.text and "each task starts cold" in caplog.text
