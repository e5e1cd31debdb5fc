"""The site's teacher versions: a coordinator's request never overwrites the serving teacher.

Layout of a teacher folder (node config ``teacher-dir``)::

    TEACHER_DIR/best.pt, teacher.json, split.json, ...   version "base": `site-node train --out`
    TEACHER_DIR/versions/<n>/                          n = 1, 2, ...: trained on a `train` request
    TEACHER_DIR/current                                the serving version's name (one line)

Without ``current`` the base version serves. A remote ``train`` request trains into a NEW
``versions/<n>`` folder; it serves at once only when no complete teacher served before (the
first teacher of a new site), otherwise only after the site runs
``site-node teacher use N --teacher-dir TEACHER_DIR``, which writes ``current`` atomically.
Which overrides a request may set, and whether it may retrain at all, is the site's
:class:`site_node.policy.RemoteTrainPolicy`.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import ConfigError
from common.data.teacher_card import TeacherCard

if TYPE_CHECKING:
    from common.protocol import TrainConfig
    from site_node.policy import RemoteTrainPolicy

BASE = "base"
CURRENT = "current"
VERSIONS = "versions"
_NUMBER = re.compile(r"^[1-9][0-9]{0,8}$")


class TeacherVersionError(ConfigError):
    """A version name or folder that cannot serve (one line naming it; exit code 2)."""


def version_dir(teacher_dir: Path, name: str) -> Path:
    """The folder of version ``name`` (``base`` or a positive integer)."""
    if name == BASE:
        return teacher_dir
    if not _NUMBER.match(name):
        raise TeacherVersionError(f"{teacher_dir}: teacher version {name!r} is not 'base' or "
                                  "a positive integer")
    return teacher_dir / VERSIONS / name


def is_complete(folder: Path) -> bool:
    """A finished teacher: ``best.pt`` and its ``teacher.json`` card."""
    return (folder / "best.pt").is_file() and TeacherCard.exists(folder)


def serving_name(teacher_dir: Path) -> str:
    """The name in ``TEACHER_DIR/current``, else ``base``."""
    pointer = teacher_dir / CURRENT
    return pointer.read_text().strip() if pointer.is_file() else BASE


def serving_dir(teacher_dir: Path) -> Path:
    """The folder of the teacher that answers queries and scores students."""
    return version_dir(teacher_dir, serving_name(teacher_dir))


def list_versions(teacher_dir: Path) -> list[str]:
    """Complete versions, ``base`` first then by number."""
    root = teacher_dir / VERSIONS
    numbers = sorted(int(p.name) for p in root.iterdir()
                     if _NUMBER.match(p.name)) if root.is_dir() else []
    names = [BASE, *(str(n) for n in numbers)]
    return [n for n in names if is_complete(version_dir(teacher_dir, n))]


def new_version_dir(teacher_dir: Path) -> Path:
    """Create and return the next free ``versions/<n>`` folder (never an existing one)."""
    root = teacher_dir / VERSIONS
    root.mkdir(parents=True, exist_ok=True)
    n = max((int(p.name) for p in root.iterdir() if _NUMBER.match(p.name)), default=0) + 1
    while True:
        try:
            (root / str(n)).mkdir()
            return root / str(n)
        except FileExistsError:
            n += 1


def use_version(teacher_dir: Path, name: str) -> Path:
    """Make version ``name`` the serving one (``current`` replaced atomically); its folder."""
    folder = version_dir(teacher_dir, name)
    if not is_complete(folder):
        raise TeacherVersionError(f"{folder}: not a complete teacher (best.pt + teacher.json); "
                                  f"versions: {list_versions(teacher_dir)}")
    tmp = teacher_dir / f".{CURRENT}.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, teacher_dir / CURRENT)
    return folder


# ----------------------------------------------------------------------------- CLI
def add_teacher_args(p: argparse.ArgumentParser) -> None:
    """``site-node teacher list|use [VERSION] --teacher-dir DIR``."""
    p.add_argument("action", choices=["list", "use"])
    p.add_argument("version", nargs="?", help="version to serve: 'base' or N (for 'use')")
    p.add_argument("--teacher-dir", dest="teacher_dir", type=Path, required=True,
                   help="the teacher run folder (written by site-node train)")


def main_teacher(args: argparse.Namespace) -> int:
    """List the versions (``*`` = serving) or switch the serving one."""
    if args.action == "use":
        if not args.version:
            raise TeacherVersionError("site-node teacher use: give a VERSION ('base' or N)")
        print(f"serving {use_version(args.teacher_dir, args.version)}")
        return 0
    serving = serving_name(args.teacher_dir)
    for name in list_versions(args.teacher_dir):
        print(f"{'*' if name == serving else ' '} {name}  "
              f"{version_dir(args.teacher_dir, name)}")
    return 0


# ----------------------------------------------------------------------------- remote requests
def remote_overrides(cfg: TrainConfig, rule: RemoteTrainPolicy
                     ) -> tuple[dict[str, object], list[str]]:
    """The overrides of a ``train`` request that ``rule`` allows (``{field: value}``) and the
    ignored ones (``["epochs=500", ...]``): a model in ``rule.models``, epochs up to
    ``rule.max_epochs``, a size in ``rule.min_size..rule.max_size``; anything else is ignored."""
    asked: dict[str, object] = {"model": cfg.model or None, "epochs": cfg.epochs or None,
                                "size": cfg.size or None}
    allowed: dict[str, Callable[[Any], bool]] = {
        "model": lambda v: v in rule.models, "epochs": lambda v: v <= rule.max_epochs,
        "size": lambda v: rule.min_size <= v <= rule.max_size}
    honoured = {k: v for k, v in asked.items() if v is not None and allowed[k](v)}
    ignored = [f"{k}={v!r}" for k, v in asked.items() if v is not None and k not in honoured]
    return honoured, ignored
