"""Process supervisor of the local deployment: start roles in their own sessions, wait for
their health checks, stop process groups (SIGTERM, then SIGKILL after a grace period); free
ports for a plan (:func:`allocate_ports`) and what tells a role lost its port
(:func:`port_clash`, :func:`owns_port`).

Each process logs stdout+stderr to ``<logs>/<name>.log`` (a restarted role's earlier log is
kept as ``<name>.<k>.log``). Roles are started through ``deploy/entrypoints/entrypoint.sh ROLE``
with the environment :mod:`coordinator.topology.env` built for them, in the order
docker-compose.yml starts them (:func:`start_topology`); a SuperLink whose port was taken
between the plan and its start is restarted on a fresh port.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import IO

from coordinator.topology.env import ENTRYPOINTS, HOST, ONE_SHOT, Role, Topology, role_envs

log = logging.getLogger(__name__)

#: Starts of one role on a fresh port after its port turned out to be taken.
PORT_TRIES = 3
#: How a process (uvicorn under flower-superlink / flower-supernode, or Python) says its port
#: is taken.
_CLASH = re.compile(r"address already in use|\[Errno 98\]|EADDRINUSE", re.IGNORECASE)
#: ``(n) -> n ports``: how a plan gets its ports (tests inject their own).
PortAllocator = Callable[[int], tuple[int, ...]]


class RoleFailed(RuntimeError):
    """A role exited or never became healthy; the message names it and its log."""


def allocate_ports(n: int) -> tuple[int, ...]:
    """``n`` distinct TCP ports free on 127.0.0.1: every socket is held until all are chosen
    (closing one before binding the next lets the kernel hand the same port out again)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                 for _ in range(n)]
        for s in socks:
            s.bind((HOST, 0))
        return tuple(int(s.getsockname()[1]) for s in socks)


def distinct_ports(n: int, allocate: PortAllocator = allocate_ports,
                   exclude: Iterable[int] = ()) -> tuple[int, ...]:
    """``n`` ports from ``allocate``, all different and none in ``exclude``; asks again when
    the allocator repeats itself, a one-line RuntimeError after :data:`PORT_TRIES` tries."""
    taken = set(exclude)
    for _ in range(PORT_TRIES):
        ports = tuple(allocate(n))
        if len(set(ports)) == n and not taken & set(ports):
            return ports
        log.warning("port allocator gave clashing ports %s (in use: %s); asking again",
                    list(ports), sorted(taken))
    raise RuntimeError(f"could not find {n} distinct free port(s) on {HOST} in "
                       f"{PORT_TRIES} tries")


def port_clash(log_file: Path) -> bool:
    """Whether the log of a role that exited says its port was already in use."""
    try:
        return _CLASH.search(log_file.read_text(errors="replace")) is not None
    except OSError:
        return False


def _listen_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP ``port`` (None where /proc/net/tcp cannot be read)."""
    inodes: set[str] = set()
    try:
        tables = [Path(f"/proc/net/{t}").read_text() for t in ("tcp", "tcp6")]
    except OSError:
        return None
    for line in (ln for t in tables for ln in t.splitlines()[1:]):
        f = line.split()
        if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(f[9])
    return inodes


def owns_port(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself listens on 127.0.0.1:``port`` (Linux: its open sockets
    against /proc/net/tcp; elsewhere: something accepts connections there, the check of
    ``healthcheck.sh site``)."""
    inodes = _listen_inodes(port)
    if inodes is None:
        try:
            socket.create_connection((HOST, port), 1).close()
            return True
        except OSError:
            return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] in inodes:  # socket:[inode]
                return True
        except OSError:
            continue
    return False


class Processes:
    """Started processes, each in its own session; ``stop_all`` ends them and their children."""

    def __init__(self, logs: Path, env: dict[str, str], cwd: Path) -> None:
        self.logs, self.env, self.cwd = logs, env, cwd
        self.procs: list[subprocess.Popen] = []
        self.named: dict[str, subprocess.Popen] = {}
        self.files: list[IO[bytes]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def log_file(self, name: str) -> Path:
        """Where process ``name`` logs."""
        return self.logs / f"{name}.log"

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None
              ) -> subprocess.Popen:
        """Start ``argv`` (environment ``self.env`` updated with ``env``) with stdout+stderr to
        ``logs/<name>.log``; a restart keeps the earlier log as ``<name>.<k>.log``."""
        path = self.log_file(name)
        if name in self.named and path.exists():
            k = 1 + sum(1 for _ in self.logs.glob(f"{name}.[0-9]*.log"))
            path.rename(self.logs / f"{name}.{k}.log")
        fh = path.open("wb")
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
    (:class:`RoleFailed`) when the role's process died. A SuperLink must also hold its port
    itself (:func:`owns_port`): someone else listening there is not it."""
    proc, deadline = procs.named[role.name], time.monotonic() + timeout
    argv, env = [str(ENTRYPOINTS / "healthcheck.sh"), role.role], {**procs.env, **role.env}
    own = int(role.env["SUPERLINK_PORT"]) if role.role == "superlink" else None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RoleFailed(f"{role.name} exited with {proc.returncode}; see "
                             f"{procs.log_file(role.name)}")
        if (subprocess.run(argv, env=env, capture_output=True, check=False).returncode == 0
                and (own is None or owns_port(proc.pid, own))):
            log.info("%s is healthy", role.name)
            return
        time.sleep(0.3)
    raise RoleFailed(f"{role.name} not healthy after {timeout:.0f} s; see "
                     f"{procs.log_file(role.name)}")


def plan_ports(plan: Topology) -> set[int]:
    """Every port a plan's processes listen on or dial."""
    return {plan.superlink_port, plan.dial_port, *plan.node_ports}


def start_superlink(procs: Processes, plan: Topology,
                    redial: Callable[[int], int] | None = None) -> Topology:
    """Start the SuperLink and wait until it is healthy; when its port was taken meanwhile
    (:func:`port_clash` in its log) start it again on a fresh port, at most
    :data:`PORT_TRIES` times. ``redial(port)``: the port the sites dial for a SuperLink on
    ``port`` (default: that port). The plan as started."""
    for attempt in range(1, PORT_TRIES + 1):
        (role,) = [r for r in role_envs(plan) if r.role == "superlink"]
        start_role(procs, role)
        try:
            wait_healthy(procs, role, 60)
            return plan
        except RoleFailed as exc:
            if not port_clash(procs.log_file(role.name)):
                raise
            if attempt == PORT_TRIES:
                raise RoleFailed(f"superlink: port {plan.superlink_port} already in use, "
                                 f"{PORT_TRIES} ports tried; see "
                                 f"{procs.log_file(role.name)}") from exc
            (port,) = distinct_ports(1, exclude=plan_ports(plan))
            log.warning("superlink: port %d already in use; starting it again on port %d",
                        plan.superlink_port, port)
            plan = replace(plan, superlink_port=port, dial_port=redial(port) if redial else port)
    raise AssertionError("unreachable")  # pragma: no cover


def start_topology(procs: Processes, plan: Topology,
                   redial: Callable[[int], int] | None = None) -> Topology:
    """init-certs and each site's site-keys (to completion), superlink (healthy, on a fresh
    port if its own was taken), coordinator (healthy: the sites' public keys registered), then
    every site, as docker-compose.yml orders them; the sites' health is watched by the caller
    (:class:`coordinator.topology.watch.SiteWatch`). The coordinator's audit key is made first:
    every site pins its public half (``SITE_COORDINATOR_KEY``). The plan as started."""
    from common.records import load_or_create_key

    load_or_create_key(plan.out / "audit" / "coordinator.key")
    for stage in ("init-certs", "site-keys", "superlink", "coordinator", "site"):
        if stage == "superlink":
            plan = start_superlink(procs, plan, redial)
            continue
        for role in [r for r in role_envs(plan) if r.role == stage]:
            proc = start_role(procs, role)
            if role.role in ONE_SHOT:
                rc = proc.wait(timeout=120)
                if rc != 0:
                    raise RoleFailed(f"{role.name} exited with {rc}; see "
                                     f"{procs.log_file(role.name)}")
            elif role.role == "coordinator":
                wait_healthy(procs, role, 120)
    return plan
