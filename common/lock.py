"""One writer per experiment out folder: ``OUT/.lock``, held with ``fcntl.flock``.

The lock belongs to an open file, so the kernel releases it when the holder exits, however it
exits (a crash or SIGKILL included). The file says who holds it (a JSON line: pid, host,
command, start time), so a refusal names the holder. A clean release empties the file; a
non-empty file whose lock is free was left by a process that died, and is taken over with a
WARNING naming it.

* :func:`hold_out_folder`: a context manager around the whole run; a folder in use raises
  :class:`FolderInUse` (a one-line :class:`~common.config.ConfigError`: exit code 2 through the
  CLIs' error guard). Re-entrant within one process.
* :func:`probe_out_folder`: refuse early without holding (a launcher whose run is written by
  another process, e.g. the ServerApp of a federated run).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ValidationError

from common.config import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # folders this process holds -> nesting depth


class FolderInUse(ConfigError):
    """Another live process writes to this out folder; the message names it (pid, command,
    since)."""


class LockHolder(BaseModel):
    """What ``OUT/.lock`` says about its holder."""

    pid: int
    host: str
    command: str
    since: str  # UTC, ISO 8601 to the second

    @classmethod
    def me(cls) -> LockHolder:
        """This process."""
        return cls(pid=os.getpid(), host=socket.gethostname(),
                   command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
                   since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def describe(self) -> str:
        """``pid 123 on host (coordinator distill --local ...) since 2026-...Z``."""
        return f"pid {self.pid} on {self.host} ({self.command}) since {self.since}"


def _read_holder(fd: int) -> LockHolder | None:
    """The holder recorded in the open lock file (None: empty or unreadable)."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096).decode(errors="replace").strip()
    if not raw:
        return None
    try:
        return LockHolder.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        return None


def _try_lock(folder: Path) -> tuple[int, LockHolder | None]:
    """Open ``folder/.lock`` and take its lock; ``(fd, what the file said before)``, or
    :class:`FolderInUse` naming the live holder."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        who = holder.describe() if holder else "another process"
        raise FolderInUse(f"{folder} is in use by {who}; wait for it to finish or choose "
                          "another out folder") from None
    return fd, _read_holder(fd)


def probe_out_folder(path: Path) -> None:
    """Raise :class:`FolderInUse` when a live process holds ``path``; hold nothing."""
    folder = Path(path).resolve()
    if folder in _held or not (folder / LOCK_NAME).exists():
        return
    fd, _ = _try_lock(folder)
    os.close(fd)


@contextmanager
def hold_out_folder(path: Path) -> Iterator[Path]:
    """Be the one writer of ``path`` (created if missing) until the block ends; yields the lock
    file. Raises :class:`FolderInUse` (one line: holder's pid, command, since) when a live
    process holds it; takes over a lock left by a dead process with a WARNING."""
    folder = Path(path).resolve()
    if folder in _held:  # nested in this process: already ours
        _held[folder] += 1
        try:
            yield folder / LOCK_NAME
        finally:
            _held[folder] -= 1
        return
    fd, stale = _try_lock(folder)
    if stale is not None:
        log.warning("%s: taking over the lock left by %s, which is no longer running",
                    folder, stale.describe())
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (LockHolder.me().model_dump_json() + "\n").encode())
    _held[folder] = 1
    try:
        yield folder / LOCK_NAME
    finally:
        del _held[folder]
        os.ftruncate(fd, 0)  # released cleanly: nothing stale for the next writer
        os.close(fd)
