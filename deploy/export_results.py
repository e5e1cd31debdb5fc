#!/usr/bin/env python3
"""Hand the coordinator's run folder over to the exported results folder, without any secret.

The ServerApp writes its run folder (``EXPERIMENT_OUT``) on the coordinator's own volume; it
holds the coordinator's private audit key (``audit/coordinator.key``) and the teacher cache.
This copies everything else to ``RESULTS_DIR`` (compose: the ``./results`` bind mount, read on
the host), skipping every private key (a ``*.key`` file or a file whose first bytes carry a PEM
or OpenSSH ``PRIVATE KEY`` block) and the teacher cache, makes what it wrote readable by
everyone (files 0644, folders 0755: the host user is not the container's uid 10001), then
checks that no private key is anywhere under ``RESULTS_DIR``.

Usage: ``python deploy/export_results.py SRC DST``. Exit status 0; 1 when a private key is
found in DST (one line per key, nothing else is removed); 2 on bad arguments or an I/O error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

SKIP_DIRS = frozenset({"teacher_cache"})  # the teachers' answers: large, never exported
SKIP_FILES = frozenset({".lock"})  # the out folder's one-writer lock: meaningless on the host
KEY_SUFFIXES = (".key",)
KEY_MARKERS = (b"PRIVATE KEY-----",)  # PEM (PKCS8, EC, RSA) and OpenSSH private keys
HEAD_BYTES = 4096


def is_private_key(path: Path) -> bool:
    """Whether ``path`` (a regular file) is, or looks like, a private key."""
    if path.name.endswith(KEY_SUFFIXES):
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError:
        return False
    return any(marker in head for marker in KEY_MARKERS)


def private_keys(folder: Path) -> list[Path]:
    """Every private key under ``folder`` (sorted)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_private_key(p))


def _ignore(directory: str, names: list[str]) -> set[str]:
    """``shutil.copytree`` filter: the teacher cache and private keys stay behind."""
    base = Path(directory)
    return {n for n in names
            if (n in SKIP_DIRS and (base / n).is_dir()) or n in SKIP_FILES
            or ((base / n).is_file() and is_private_key(base / n))}


def _open_up(folder: Path) -> None:
    """Files 0644, folders 0755 under ``folder`` (and ``folder`` itself)."""
    folder.chmod(0o755)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            (Path(root) / d).chmod(0o755)
        for f in files:
            path = Path(root) / f
            if not path.is_symlink():
                path.chmod(0o644)


def export(src: Path, dst: Path) -> list[Path]:
    """Copy ``src``'s contents into ``dst`` (merged, files overwritten) without private keys or
    the teacher cache, open the copies up for reading; returns the private keys left in ``dst``
    (empty unless something else put one there)."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in sorted(src.iterdir()):
        if item.name in _ignore(str(src), [item.name]):
            continue
        target = dst / item.name
        if item.is_dir():
            shutil.copytree(item, target, ignore=_ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    _open_up(dst)
    return private_keys(dst)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(prog="export_results", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="the coordinator's run folder (EXPERIMENT_OUT)")
    p.add_argument("dst", type=Path, help="the exported results folder (RESULTS_DIR)")
    args = p.parse_args(argv)
    if not args.src.is_dir():
        print(f"export_results: {args.src}: not a folder", file=sys.stderr)
        return 2
    try:
        left = export(args.src, args.dst)
    except OSError as exc:
        print(f"export_results: cannot export {args.src} to {args.dst}: {exc}", file=sys.stderr)
        return 2
    for key in left:
        print(f"export_results: {key}: a private key in the exported folder; remove it",
              file=sys.stderr)
    if left:
        return 1
    print(f"export_results: {args.src} -> {args.dst} (no private key, readable by all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
