"""``coordinator simulate`` is split into builder, supervisor and orchestration; the deployment
path (``coordinator distill`` against a real SuperLink) uses only the pure builder."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) and n.module}


def test_the_deployment_path_imports_only_the_environment_builder() -> None:
    topo = {m for m in _imported(ROOT / "coordinator" / "federated_cli.py")
            if m.startswith("coordinator.topology") or m == "coordinator.simulate"}
    assert topo == {"coordinator.topology.env"}


def test_the_builder_starts_nothing() -> None:
    imported = _imported(ROOT / "coordinator" / "topology" / "env.py")
    assert not imported & {"subprocess", "socket", "signal", "coordinator.topology.supervisor"}


def test_the_supervisor_stops_a_process_group(tmp_path: Path) -> None:
    from coordinator.topology.env import base_env
    from coordinator.topology.supervisor import Processes

    procs = Processes(tmp_path / "logs", base_env(), tmp_path)
    proc = procs.start("sleeper", ["/bin/sh", "-c", "echo up; sleep 60 & wait"])
    procs.stop_all()
    assert proc.poll() is not None and proc.returncode != 0  # killed, not finished
    assert (tmp_path / "logs" / "sleeper.log").is_file()
