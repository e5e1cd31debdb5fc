"""Import the deploy/*.py scripts (not a package) by path."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str) -> ModuleType:
    """The module ``deploy/<name>.py``."""
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", ROOT / "deploy" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_compose_repo(dst: Path) -> Path:
    """A copy under ``dst`` of what docker-compose.yml references (the compose file, the
    Dockerfile, the entrypoints): a tree the compose checks can be run on after an edit."""
    import shutil

    for rel in ("docker-compose.yml", "deploy/Dockerfile", "deploy/entrypoints"):
        src, out = ROOT / rel, dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, out)
    return dst


def edit_compose(repo: Path, fn: Callable[[dict[str, Any]], object]) -> list[str]:
    """Apply ``fn`` to the parsed docker-compose.yml of ``repo``, write it back and return
    ``check_compose``'s problems."""
    import yaml

    path = repo / "docker-compose.yml"
    doc = yaml.safe_load(path.read_text())
    fn(doc)
    path.write_text(yaml.safe_dump(doc))
    return list(load_script("check_compose").check_compose(path, repo))
