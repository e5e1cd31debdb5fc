"""Both command lines end in one line, never a traceback: typos, global flags, bad devices,
corrupt checkpoints, unsafe names, too many sites, the memory guard and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import ConfigError
from coordinator.cli import main as coordinator_main
from site_node.cli import main as site_main

ROOT = Path(__file__).resolve().parents[2]


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_typo_is_refused_with_the_valid_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert site_main(["trian", "--data", "x"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "unknown command 'trian' (did you mean 'train'?)" in line and "status" in line
    assert coordinator_main(["-v", "distil"]) == 2
    assert "did you mean 'distill'?" in _one_line(capsys.readouterr().err)


def test_global_flags_before_the_command_keep_the_command(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        site_main(["-q", "train", "--data", "X"])
    assert exit_.value.code == 2
    assert "site-node train: error: the following arguments are required: --out" in (
        capsys.readouterr().err)  # train's own parser, not `run`'s


@pytest.mark.parametrize("device", ["cuda:99", "gpu", "cuda"])
def test_an_unusable_device_is_one_config_error(device: str) -> None:
    import torch

    from common.training import select_device

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=f"--device {device}"):
        select_device(device)


def test_train_with_a_missing_gpu_is_one_line(tiny_sites: dict, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = site_main(["train", "--data", str(tiny_sites["site_a"]), "--out",
                      str(tmp_path / "t"), "--device", "cuda:99", "--epochs", "1"])
    assert code == 2 and "--device cuda:99" in _one_line(capsys.readouterr().err)


def test_a_corrupt_checkpoint_is_one_line(tmp_path: Path) -> None:
    import pickle

    from common.models.checkpoint import CheckpointError, load_model

    bad = tmp_path / "best.pt"
    bad.write_bytes(pickle.dumps({"x": 1})[:5] + b"garbage that is not a pickle")
    with pytest.raises(CheckpointError, match="not a usable fedmtkd checkpoint") as err:
        load_model(bad)
    assert "\n" not in str(err.value)


def test_run_with_an_unsafe_name_is_one_line(tiny_sites: dict, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = site_main(["--data", str(tiny_sites["site_a"]), "--coordinator", "127.0.0.1:9",
                      "--name", "../../x", "--insecure", "--dry-run",
                      "--state-dir", str(tmp_path / "s")])
    assert code == 2 and "is not a safe name" in _one_line(capsys.readouterr().err)


def test_simulate_with_too_many_sites_is_one_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = sorted((ROOT / "configs").glob("*prostate*.toml"))[0]  # any 3-site experiment
    code = coordinator_main(["simulate", "--sites", "99", "--config", str(config),
                             "--workdir", str(tmp_path)])
    assert code == 2 and "--sites 99" in _one_line(capsys.readouterr().err)
    assert not any(tmp_path.iterdir())


def test_the_memory_guard_and_unexpected_errors_are_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import coordinator.cli as cli
    from coordinator.distill.memory import MemoryBudgetError

    def guard(args: object) -> int:
        raise MemoryBudgetError("memory guard: this run needs about 9.0 GB")

    monkeypatch.setattr(cli, "_cmd_models", guard)
    assert coordinator_main(["models"]) == 2
    assert _one_line(capsys.readouterr().err) == (
        "coordinator: error: memory guard: this run needs about 9.0 GB")

    def bug(args: object) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "_cmd_models", bug)
    assert coordinator_main(["models"]) == 1
    assert "internal error: ZeroDivisionError" in _one_line(capsys.readouterr().err)


def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """A real SIGINT to a running ``site-node`` command."""
    code = ("import sys, time\n"
            "import site_node.cli as c\n"
            "def slow(args):\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(60)\n"
            "    return 0\n"
            "c._cmd_policy_show = slow\n"
            "sys.exit(c.main(['policy', 'show']))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # SIGINT at its default in the child: a test run started in the background (``cmd &``
    # without job control) inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt; a user's terminal delivers it
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert _one_line(err) == "site-node: interrupted"


def test_an_output_path_that_is_a_file_is_one_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Found by the entry fuzz suite: an OS error on a given path was an internal error."""
    afile = tmp_path / "a_file"
    afile.write_text("x")
    assert coordinator_main(["make-proxy", "--out", str(afile)]) == 2
    assert "Not a directory" in _one_line(capsys.readouterr().err)
