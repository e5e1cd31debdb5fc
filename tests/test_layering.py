"""The layering contracts of docs/ARCHITECTURE.md, checked the way CI checks them (lint-imports).

The contracts are read from the real ``pyproject.toml``; a fixture tree that breaks each one must
make the checker fail, and the real tree must pass.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUN = ("import sys; from importlinter.cli import lint_imports_command; "
       "sys.exit(lint_imports_command())")
ROLES = ("site_node", "coordinator")


def _contracts() -> dict[str, Any]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"])


def _toml(cfg: dict[str, Any]) -> str:
    """The ``[tool.importlinter]`` table as TOML (values are strings or lists of strings)."""
    lines = ["[tool.importlinter]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in cfg.items() if k != "contracts"]
    for contract in cfg["contracts"]:
        lines += ["", "[[tool.importlinter.contracts]]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in contract.items()]
    return "\n".join(lines) + "\n"


def _lint(cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, "-c", RUN, "--no-cache", str(config)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_contracts_cover_the_layering() -> None:
    cfg = _contracts()
    kinds = {c["type"]: c for c in cfg["contracts"]}
    forbidden = {tuple(c["source_modules"]): set(c["forbidden_modules"])
                 for c in cfg["contracts"] if c["type"] == "forbidden"}
    assert set(cfg["root_packages"]) == {"common", *ROLES, "bench"}
    assert forbidden == {("common",): set(ROLES), ("common", *ROLES): {"bench"}}
    assert set(kinds["independence"]["modules"]) == set(ROLES)
    assert set(kinds["acyclic_siblings"]["ancestors"]) == {"common", *ROLES}


def test_the_real_tree_keeps_every_contract() -> None:
    res = _lint(ROOT, ROOT / "pyproject.toml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"Contracts: {len(_contracts()['contracts'])} kept, 0 broken." in res.stdout


def test_a_role_to_role_import_fails_the_check(tmp_path: Path) -> None:
    _write(tmp_path, {
        "common/__init__.py": "",
        "common/kd/__init__.py": "",
        "common/kd/a.py": "from common.kd import b\n",
        "common/kd/b.py": "from common.kd import a\n",
        "common/lib.py": "import coordinator.engine\n",
        "site_node/__init__.py": "",
        "site_node/app.py": "from coordinator.engine import run\n",
        "site_node/probe.py": "import bench.helpers\n",
        "coordinator/__init__.py": "",
        "coordinator/engine.py": "def run() -> None: ...\n",
        "bench/__init__.py": "",
        "bench/helpers.py": "",
    })
    (tmp_path / "pyproject.toml").write_text(_toml(_contracts()))
    res = _lint(tmp_path, tmp_path / "pyproject.toml")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Contracts: 0 kept, 4 broken." in res.stdout
    assert "site_node.probe -> bench.helpers" in res.stdout
    assert "site_node.app -> coordinator.engine" in res.stdout
    assert "common.lib -> coordinator.engine" in res.stdout
    assert "No cycles are allowed in common.kd" in res.stdout


def test_a_clean_fixture_tree_passes(tmp_path: Path) -> None:
    _write(tmp_path, {
        "common/__init__.py": "",
        "common/lib.py": "def f() -> int:\n    return 1\n",
        "site_node/__init__.py": "",
        "site_node/app.py": "from common.lib import f\n",
        "coordinator/__init__.py": "",
        "coordinator/engine.py": "from common import lib\n",
        "bench/__init__.py": "",
        "bench/run.py": "from coordinator import engine\nfrom site_node import app\n",
    })
    (tmp_path / "pyproject.toml").write_text(_toml(_contracts()))
    res = _lint(tmp_path, tmp_path / "pyproject.toml")
    assert res.returncode == 0, res.stdout + res.stderr


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_deploy_scripts_import_no_role() -> None:
    """``deploy/`` is not a package, so lint-imports cannot see it: its tooling (certificates,
    compose checks) must not import either role either."""
    scripts = sorted((ROOT / "deploy").rglob("*.py"))
    assert scripts, "no deploy scripts found"
    assert _imported_roots(ROOT / "site_node" / "app.py") >= {"common"}  # the scan sees imports
    bad = {p.name: sorted(_imported_roots(p) & set(ROLES)) for p in scripts}
    assert {k: v for k, v in bad.items() if v} == {}
