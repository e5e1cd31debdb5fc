"""stdlib logging everywhere: -q/-v on both CLIs, and no print() outside CLI result output."""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.logs import LOGGERS, PACKAGES, setup_logging

ROOT = Path(__file__).resolve().parents[2]
# Modules whose print() calls are a command's answer (tables, verdicts, a --dry-run command,
# one-line user errors); everything else logs.
CLI_OUTPUT_MODULES = {
    "common/cli_errors.py", "common/audit/cli.py", "common/inference/cli.py",
    "site_node/cli.py", "site_node/run.py", "site_node/status.py",
    "site_node/teacher_versions.py",  # the answers of `site-node teacher list|use`
    "site_node/keys.py",  # the answers of `site-node keys init|show` (public paths, fingerprints)
    "coordinator/topology/ray_engine.py",  # the usage line of its `python -m` entry point
    "coordinator/cli.py", "coordinator/federated_cli.py", "coordinator/topology/simulate.py",
    "site_node/check.py",  # the answer of `site-node check` (fingerprint, plan, sizing)
    "site_node/dicom_import.py",  # the answer of `site-node import-dicom` (its report)
    "site_node/warm.py",  # the stdlib-only flwr-clientapp shim: its stderr, no logging set up
}
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (INFO|DEBUG|WARNING) ", re.MULTILINE)


@pytest.fixture(autouse=True)
def _restore_loggers() -> Iterator[None]:
    yield
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)


def test_levels_follow_verbosity(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("coordinator.some.module")
    for verbosity, shown in ((-1, {"WARNING"}), (0, {"INFO", "WARNING"}),
                             (1, {"DEBUG", "INFO", "WARNING"})):
        setup_logging(verbosity)
        log.debug("d")
        log.info("i")
        log.warning("w")
        err = capsys.readouterr().err
        assert set(STAMP.findall(err)) == shown, (verbosity, err)
        assert len(err.splitlines()) == len(shown)  # one handler, even after repeated set-up
    assert "coordinator.some.module: w" in err
    setup_logging(0)
    logging.getLogger("__main__").info("m")  # e.g. `python -m site_node.pinned_app`
    assert "INFO    __main__: m" in capsys.readouterr().err


def _proxy_args(tmp_path: Path) -> list[str]:
    return ["make-proxy", "--out", str(tmp_path / "p"), "--cases", "1", "--depth", "4",
            "--size", "16"]


def test_coordinator_quiet_suppresses_info_and_verbose_shows_debug(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator.cli import main

    assert main(_proxy_args(tmp_path)) == 0
    err = capsys.readouterr().err
    assert STAMP.search(err) and "INFO    coordinator.cli: wrote proxy phantom set" in err
    assert main(["-q", *_proxy_args(tmp_path)]) == 0
    assert capsys.readouterr().err == ""
    assert main([*_proxy_args(tmp_path), "--quiet"]) == 0  # after the subcommand too
    assert capsys.readouterr().err == ""
    assert main([*_proxy_args(tmp_path), "-v"]) == 0
    logging.getLogger("coordinator.probe").debug("debug line")
    assert "DEBUG   coordinator.probe: debug line" in capsys.readouterr().err


def test_site_node_quiet_and_verbose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from site_node.cli import main

    argv = ["make-phantom", "--site-style", "A", "--out", str(tmp_path / "a"), "--cases", "1",
            "--depth", "4", "--size", "16"]
    assert main(["--quiet", *argv]) == 0
    assert capsys.readouterr().err == ""
    assert main([*argv, "-v"]) == 0
    err = capsys.readouterr().err
    assert "INFO    site_node.cli: wrote 1 prostate phantom cases (style A)" in err
    logging.getLogger("site_node.probe").debug("debug line")
    assert "DEBUG   site_node.probe: debug line" in capsys.readouterr().err


def _print_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), str(path))
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name) and n.func.id == "print"]


def test_no_print_outside_cli_output_modules() -> None:
    offenders = [f"{p.relative_to(ROOT)}:{line}" for pkg in PACKAGES
                 for p in sorted((ROOT / pkg).rglob("*.py"))
                 if str(p.relative_to(ROOT)) not in CLI_OUTPUT_MODULES
                 for line in _print_calls(p)]
    assert offenders == []
    assert _print_calls(ROOT / "coordinator" / "cli.py")  # the scan does see print calls
