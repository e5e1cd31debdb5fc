"""One writer per out folder: ``OUT/.lock`` (``common.lock``), across real processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common.lock import FolderInUse, hold_out_folder, probe_out_folder

HOLDER = ("import sys, time\nfrom pathlib import Path\nfrom common.lock import hold_out_folder\n"
          "with hold_out_folder(Path(sys.argv[1])):\n"
          "    print('held', flush=True)\n    time.sleep(120)\n")


def _holder(folder: Path) -> subprocess.Popen:
    """A second process holding ``folder`` (started and holding when this returns)."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), "--marker"],
                            stdout=subprocess.PIPE, text=True, cwd=root)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    proc = _holder(out)
    try:
        with pytest.raises(FolderInUse) as exc, hold_out_folder(out):
            pass
        msg = str(exc.value)
        assert f"pid {proc.pid}" in msg and "-c " in msg and "--marker" in msg
        assert " since 20" in msg and str(out) in msg and "\n" not in msg
        with pytest.raises(FolderInUse):
            probe_out_folder(out)
    finally:
        proc.kill()
        proc.wait()
    with hold_out_folder(out) as lock:  # the kernel released it with the dead process
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "exp"
    proc = _holder(out)
    os.kill(proc.pid, signal.SIGKILL)  # no clean release: the file still names it
    proc.wait()
    assert json.loads((out / ".lock").read_text())["pid"] == proc.pid
    probe_out_folder(out)  # a dead holder does not block
    with caplog.at_level(logging.WARNING, logger="common.lock"), hold_out_folder(out) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"taking over the lock left by pid {proc.pid}" in caplog.text
    assert lock.read_text() == ""  # a clean release leaves nothing stale
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="common.lock"), hold_out_folder(out):
        pass
    assert "taking over" not in caplog.text


def test_the_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    with hold_out_folder(tmp_path / "exp") as outer:
        with hold_out_folder(tmp_path / "exp") as inner:
            assert inner == outer
            probe_out_folder(tmp_path / "exp")
        assert json.loads(outer.read_text())["pid"] == os.getpid()  # still held
    assert outer.read_text() == ""


def test_a_refusal_is_one_line_and_exit_code_2(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from common.cli_errors import run_guarded

    proc = _holder(tmp_path / "exp")
    try:
        def run() -> int:
            with hold_out_folder(tmp_path / "exp"):
                return 0

        assert run_guarded(run, "coordinator") == 2
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err
    assert err.startswith("coordinator: error: ") and len(err.strip().splitlines()) == 1
    assert f"in use by pid {proc.pid}" in err
