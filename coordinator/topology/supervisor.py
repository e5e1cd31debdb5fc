"""Process supervisor of the local deployment: start roles in their own sessions, wait for
their health checks, stop process groups (SIGTERM, then SIGKILL after a grace period).

Each process logs stdout+stderr to ``<logs>/<name>.log``. Roles are started through
``deploy/entrypoints/entrypoint.sh ROLE`` with the environment :mod:`coordinator.topology.env`
built for them, in the order docker-compose.yml starts them (:func:`start_topology`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

from coordinator.topology.env import ENTRYPOINTS, ONE_SHOT, Plan, Role, role_envs

log = logging.getLogger(__name__)


class Processes:
    """Started processes, each in its own session; ``stop_all`` ends them and their children."""

    def __init__(self, logs: Path, env: dict[str, str], cwd: Path) -> None:
        self.logs, self.env, self.cwd = logs, env, cwd
        self.procs: list[subprocess.Popen] = []
        self.named: dict[str, subprocess.Popen] = {}
        self.files: list[IO[bytes]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None
              ) -> subprocess.Popen:
        """Start ``argv`` (environment ``self.env`` updated with ``env``) with stdout+stderr to
        ``logs/<name>.log``."""
        fh = (self.logs / f"{name}.log").open("wb")
        self.files.append(fh)
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                env={**self.env, **(env or {})}, cwd=self.cwd,
                                start_new_session=True)
        self.procs.append(proc)
        self.named[name] = proc
        log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return proc

    def stop(self, procs: list[subprocess.Popen], grace: float = 10.0) -> None:
        """SIGTERM the process groups of ``procs`` at once, SIGKILL what is left of each group
        once its leader exited or ``grace`` seconds passed."""
        deadline = time.monotonic() + grace
        for proc in procs:
            killpg(proc, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            killpg(proc, signal.SIGKILL)  # the leader's children, or a leader that hangs
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass

    def stop_all(self, last: tuple[str, ...] = ("superlink",)) -> None:
        """Stop every process, those named in ``last`` (the SuperLink: the SuperNodes say
        goodbye to it) after all others; close the log files."""
        later = [self.named[n] for n in last if n in self.named]
        self.stop([p for p in reversed(self.procs) if p not in later])
        self.stop(later)
        for fh in self.files:
            fh.close()


def killpg(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process group of ``proc`` (gone already: nothing to do)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start_role(procs: Processes, role: Role) -> subprocess.Popen:
    """``entrypoint.sh ROLE`` with the role's environment, logging to ``logs/<name>.log``."""
    return procs.start(role.name, [str(ENTRYPOINTS / "entrypoint.sh"), role.role], role.env)


def wait_healthy(procs: Processes, role: Role, timeout: float) -> None:
    """Poll ``healthcheck.sh ROLE`` (the containers' healthcheck) until it passes; fail early
    when the role's process died."""
    proc, deadline = procs.named[role.name], time.monotonic() + timeout
    argv, env = [str(ENTRYPOINTS / "healthcheck.sh"), role.role], {**procs.env, **role.env}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{role.name} exited with {proc.returncode}; see "
                               f"{procs.logs / role.name}.log")
        if subprocess.run(argv, env=env, capture_output=True, check=False).returncode == 0:
            log.info("%s is healthy", role.name)
            return
        time.sleep(0.3)
    raise TimeoutError(f"{role.name} not healthy after {timeout:.0f} s; see "
                       f"{procs.logs / role.name}.log")


def start_topology(procs: Processes, plan: Plan) -> None:
    """init-certs and each site's site-keys (to completion), superlink (healthy), coordinator
    (healthy: the sites' public keys registered), then every site, as docker-compose.yml
    orders them."""
    for role in role_envs(plan):
        proc = start_role(procs, role)
        if role.role in ONE_SHOT:
            rc = proc.wait(timeout=120)
            if rc != 0:
                raise RuntimeError(f"{role.name} exited with {rc}; see "
                                   f"{procs.logs / role.name}.log")
        elif role.role in ("superlink", "coordinator"):
            wait_healthy(procs, role, 60 if role.role == "superlink" else 120)
