"""Without a pinned coordinator key the gate warns once per state folder, not per message."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from site_node.egress import UNPINNED_MARKER, EgressGate


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "no pinned coordinator key" in r.getMessage()]


def test_unpinned_warning_once_per_state_folder(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="site_node.egress")
    for _ in range(3):  # three messages, each a fresh gate as in a fresh ClientApp process
        EgressGate.from_node_config({"state-dir": str(tmp_path / "a")}, tmp_path)
    assert len(_warnings(caplog)) == 1
    assert (tmp_path / "a" / UNPINNED_MARKER).is_file()
    EgressGate.from_node_config({"state-dir": str(tmp_path / "b")}, tmp_path)
    assert len(_warnings(caplog)) == 2  # another site's folder warns again
