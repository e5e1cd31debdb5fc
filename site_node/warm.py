"""Warm ClientApp processes: a fork server beside the SuperNode, so a message does not pay for
a fresh interpreter and its imports (~1.5 s of Flower, torch and the app per message).

Flower's SuperExec starts ``flwr-clientapp`` (our app-pinning shim, :mod:`site_node.pinned_app`)
once per message. ``site-node run`` also starts :func:`serve` (``python -m site_node.warm_server``),
which imports Flower's ClientApp runtime, :mod:`site_node.app` and the handlers' heavy imports
(torch, numpy, ``common.*``) once, runs no torch op (so no OpenMP thread exists when it forks),
and listens on a Unix socket (mode 0600; the path is in ``FEDMTKD_WARM_SOCKET``). The shim
then only runs :func:`run_via_server` (stdlib only): it sends its argv, environment and working
directory and passes its stdin/stdout/stderr (SCM_RIGHTS); the server forks a child that takes
those as its own and runs the pinned ClientApp (:func:`site_node.pinned_app.run_pinned`: FAB
checked, only the installed app loaded), exactly what the shim would have run in-process. The
shim waits, forwards SIGTERM/SIGINT to the child and exits with its exit code. Each message
still gets its own process (a fork), so the egress mod, policy and signed log run unchanged.

No socket, a refused connection or a server that does not take the request: the shim runs the
ClientApp in-process as before (:func:`site_node.pinned_app.main`). The server exits when the
process that started it (the SuperNode) is gone, or on SIGTERM/SIGINT, removing its socket.

Only this module's top-level imports run in the shim: keep them stdlib.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

SOCKET_ENV = "FEDMTKD_WARM_SOCKET"
SOCKET_NAME = "warm.sock"
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux
MAX_REQUEST = 4 << 20  # argv + environment, bytes
HEADER = struct.Struct("!I")
#: What the server imports before it forks (the handlers import these lazily).
PRELOAD = ("flwr.supernode.cli.flwr_clientapp", "flwr.supernode.runtime.run_clientapp",
           "site_node.pinned_app", "site_node.app", "numpy", "torch", "common.models",
           "common.models.checkpoint", "common.inference.evaluate", "common.metrics",
           "common.training",
           "common.data.test_split", "common.kd.plan_bridge", "common.compress",
           "site_node.fedavg", "site_node.train")
Target = Callable[[list[str]], Any]  # runs one ClientApp with this argv (no program name)
log = logging.getLogger("site_node.warm")  # also when run as __main__


# ----------------------------------------------------------------------------- the shim's side
def _read_line(reader: Any) -> dict[str, Any] | None:
    line = reader.readline(65536)
    if not line:
        return None
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


def _forward_signals(pid: int) -> None:
    def forward(sig: int, _frame: Any) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)


def _wait_gone(pid: int, poll: float = 0.2) -> None:
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:  # pid reused by another user's process: ours is gone
            return
        time.sleep(poll)


def _send_request(sock: socket.socket, argv: list[str]) -> None:
    body = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    data = HEADER.pack(len(body)) + body
    sent = socket.send_fds(sock, [data[:4096]], [0, 1, 2])
    sock.sendall(data[sent:])


def run_via_server(argv: list[str], path: str | None = None) -> int | None:
    """Run one ClientApp with ``argv`` in a child of the warm server at ``path`` (default
    ``$FEDMTKD_WARM_SOCKET``); its exit code, or None when no server took the request (the
    caller then runs it in-process)."""
    path = path if path is not None else os.environ.get(SOCKET_ENV, "")
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        _send_request(sock, argv)
        reader = sock.makefile("rb")
        first = _read_line(reader)
    except OSError as exc:
        first = {"error": f"{type(exc).__name__}: {exc}"}
    if first is None or not isinstance(first.get("pid"), int):
        sock.close()  # refused before any fork: nothing runs, the caller runs it
        why = (first or {}).get("error", "no answer")
        print(f"fedmtkd: warm ClientApp server unavailable ({why}); starting cold",
              file=sys.stderr, flush=True)
        return None
    pid = int(first["pid"])
    _forward_signals(pid)
    done = _read_line(reader)
    sock.close()
    if done is None or not isinstance(done.get("exit"), int):
        _wait_gone(pid)  # the server went away: the child's code is lost
        return 1
    return int(done["exit"])


# ----------------------------------------------------------------------------- the server
def socket_path(state_dir: Path) -> Path:
    """``<state_dir>/warm.sock``, or a private temp folder's when that path is too long."""
    path = state_dir.resolve() / SOCKET_NAME
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    return Path(tempfile.mkdtemp(prefix="fedmtkd-warm-")) / SOCKET_NAME


def listen(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600, that appears only once it listens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(tmp))
    finally:
        os.umask(old)
    os.chmod(tmp, 0o600)
    sock.listen(16)
    os.replace(tmp, path)
    return sock


def _peer_is_us(conn: socket.socket) -> bool:
    """Same user (SO_PEERCRED, Linux); elsewhere the socket's mode 0600 decides."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return True
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, opt, 12))
    return bool(uid == os.getuid())


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One request: ``({"argv", "cwd", "env"}, [stdin, stdout, stderr])``; ValueError if bad
    (the received descriptors are then closed)."""
    data, fds, _flags, _addr = socket.recv_fds(conn, 4096, 3)
    try:
        if len(fds) != 3 or len(data) < HEADER.size:
            raise ValueError(f"expected 3 descriptors and a header, got {len(fds)}")
        (size,) = HEADER.unpack(data[:HEADER.size])
        if size > MAX_REQUEST:
            raise ValueError(f"request of {size} B > {MAX_REQUEST} B")
        body = data[HEADER.size:]
        while len(body) < size:
            chunk = conn.recv(min(1 << 16, size - len(body)))
            if not chunk:
                raise ValueError("connection closed mid-request")
            body += chunk
        req = json.loads(body)
        if not (isinstance(req, dict) and isinstance(req.get("argv"), list)
                and all(isinstance(a, str) for a in req["argv"])
                and isinstance(req.get("cwd"), str) and isinstance(req.get("env"), dict)):
            raise ValueError("malformed request")
        return req, list(fds)
    except ValueError:
        _close_fds(list(fds))
        raise


def _exit_code(fn: Callable[[], Any]) -> int:
    try:
        fn()
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # the ClientApp's own failure: printed to its stderr, code 1
        import traceback

        traceback.print_exc()
        return 1
    return 0


def _child(req: dict[str, Any], fds: list[int], target: Target, close: list[socket.socket]
           ) -> NoReturn:
    """In the forked child: take the shim's stdio, argv, environment and cwd; run ``target``."""
    code = 1
    try:
        for s in close:
            s.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.stdout.flush()
        sys.stderr.flush()
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
        _close_fds([fd for fd in fds if fd > 2])
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in req["env"].items()})
        code = _exit_code(lambda: target(list(req["argv"])))
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed stdio must not change the exit code
                pass
        os._exit(code)  # as multiprocessing's children: the server's atexit hooks and
        # finalizers (inherited by the fork) must not run here


def _send(conn: socket.socket, msg: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(msg).encode() + b"\n")
    except OSError:
        pass  # the shim is gone; its child runs on


class WarmServer:
    """Accepts shim connections on ``sock`` and forks one child per request (see the module
    docstring); :meth:`serve_forever` until the parent ``parent_pid`` is gone or stopped."""

    def __init__(self, sock: socket.socket, target: Target, parent_pid: int | None = None
                 ) -> None:
        self.sock = sock
        self.target = target
        self.parent_pid = parent_pid
        self.children: dict[int, socket.socket] = {}
        self.stopped = False

    def handle(self, conn: socket.socket) -> None:
        """Read one request, fork its child and tell the shim its pid (or refuse it)."""
        conn.settimeout(10)
        try:
            if not _peer_is_us(conn):
                raise ValueError("peer is another user")
            req, fds = read_request(conn)
        except (OSError, ValueError) as exc:
            _send(conn, {"error": str(exc)[:200]})
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            _child(req, fds, self.target, [self.sock, conn, *self.children.values()])
        _close_fds(fds)
        self.children[pid] = conn
        _send(conn, {"pid": pid})
        log.info("ClientApp task forked warm: pid %d", pid)

    def reap(self) -> None:
        """Send each finished child's exit code (128 + N for signal N) to its shim."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            conn = self.children.pop(pid, None)
            if conn is not None:
                _send(conn, {"exit": 128 - code if code < 0 else code})
                conn.close()

    def parent_gone(self) -> bool:
        """The process that started the server (the SuperNode) has exited."""
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def serve_forever(self, tick: float = 0.2) -> None:
        """Accept, fork and reap until stopped or orphaned."""
        self.sock.settimeout(tick)
        while not self.stopped and not self.parent_gone():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                conn = None
            if conn is not None:
                self.handle(conn)
            self.reap()


def preload(modules: tuple[str, ...] = PRELOAD) -> float:
    """Import ``modules`` (no torch op runs); seconds taken. A failed import is a warning:
    the child then imports it itself, as a cold start would."""
    import importlib

    t0 = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a broken optional import must not stop the site
            log.warning("warm ClientApp server: cannot preload %s (%s)", name, exc)
    return time.perf_counter() - t0


def thread_count() -> int:
    """Threads of this process (Linux: native ones, e.g. OpenMP's; elsewhere Python's)."""
    import threading

    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def serve(path: Path, target: Target, parent_pid: int | None = None,
          modules: tuple[str, ...] = PRELOAD) -> None:
    """Preload ``modules``, listen on ``path`` and serve until orphaned or signalled. If the
    imports started a thread, forking is not safe: nothing is served (every task starts
    cold, as without the server) and the site log says why."""
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # else numpy/scipy's OpenBLAS start idle pools
    # at import (a child restores the shim's environment before anything else runs)
    took = preload(modules)
    if (threads := thread_count()) > 1:
        log.warning("warm ClientApp server NOT started: %d threads after the imports, a fork "
                    "would not be safe; each task starts cold", threads)
        return
    sock = listen(path)
    server = WarmServer(sock, target, parent_pid)

    def stop(_sig: int, _frame: Any) -> None:
        server.stopped = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("warm ClientApp server on %s (preloaded in %.1f s)", path, took)
    try:
        server.serve_forever()
    finally:
        sock.close()
        path.unlink(missing_ok=True)


def spawn(state_dir: Path, env: dict[str, str]) -> Path:
    """Start :func:`serve` for this site (a child of this process, which is about to become
    the SuperNode by exec: the server follows its lifetime) and point ``env``'s shim at it."""
    import subprocess

    path = socket_path(state_dir)
    subprocess.Popen([sys.executable, "-m", "site_node.warm_server", "--socket", str(path),
                      "--parent-pid", str(os.getpid())], env=env, stdin=subprocess.DEVNULL)
    env[SOCKET_ENV] = str(path)
    return path
