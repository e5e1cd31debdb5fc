"""``coordinator distill --config exp.toml`` (no ``--local``): the run against a real SuperLink.

The sites' SuperNodes (``site-node --data ... --coordinator HOST:PORT``) and the SuperLink
(``flower-superlink ... --disable-runtime-dependency-installation``) are already up. This writes
``WORKDIR/flwr_home/config.toml`` (one federation, TLS via ``--certs`` unless ``--insecure``)
and ``WORKDIR/run_config.toml`` (flags, then ``--run-config FILE`` values on top), then runs
``flwr run deploy/flwr_app <federation> --stream``, echoing its output and keeping it in
``WORKDIR/flwr-run.log``. It succeeds only when the ServerApp wrote a fresh ``run_status.json``
that says ok: ``flwr run`` exits 0 even when the ServerApp failed. The ServerApp
runs where the SuperLink runs it (subprocess isolation) or where a ``flower-superexec`` attached
to it runs (process isolation: the coordinator role of ``deploy/entrypoints/coordinator.sh``,
which drives its run with this command); the experiment config and out folder must be
reachable there under the same paths. Run-config defaults come from the Flower app's
``pyproject.toml`` (:func:`coordinator.topology.env.app_defaults`), flags and ``--run-config``
go on top, and the result is validated as :class:`coordinator.run_config.RunConfig`. Only the
pure environment builder of the topology (:mod:`coordinator.topology.env`) is imported here.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coordinator.distill.config import ExperimentConfig

FEDERATION = "fedmtkd-deployment"
PROG = "coordinator distill"
log = logging.getLogger(__name__)
APP_DEFAULT = "(default: the Flower app's pyproject.toml)"


class SuperLinkUnreachable(RuntimeError):
    """Nothing answers at the SuperLink address; the message names it."""


def add_federated_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``coordinator distill`` used only without ``--local``."""
    g = p.add_argument_group("federated run (without --local)")
    g.add_argument("--superlink", default="127.0.0.1:8000", help="SuperLink HOST:PORT")
    tls = g.add_mutually_exclusive_group()
    tls.add_argument("--certs", type=Path, default=Path("certs"),
                     help="the federation's CA certificate, or a folder with its ca.crt "
                          "(TLS)")
    tls.add_argument("--insecure", action="store_true", help="no TLS (testing only)")
    g.add_argument("--min-sites", dest="min_sites", type=int,
                   help=f"fewest sites to go on with (0 = the config's min_sites) {APP_DEFAULT}")
    g.add_argument("--expected-sites", dest="expected_sites", type=int, default=0,
                   help="sites to wait for (0 = all sites of the config)")
    g.add_argument("--round-timeout", dest="round_timeout", type=float,
                   help=f"seconds per round and for the sites to connect {APP_DEFAULT}")
    g.add_argument("--timeout", type=float, default=3600.0, help="whole run, seconds")
    g.add_argument("--no-train", dest="no_train", action="store_true",
                   help="skip the train round (sites are then named node<id>)")
    g.add_argument("--chunk-size", dest="chunk_size", type=int,
                   help=f"proxy slices per query message {APP_DEFAULT}")
    g.add_argument("--query-window", dest="query_window", type=int,
                   help=f"query chunks in flight per site, 0 = lockstep {APP_DEFAULT}")
    g.add_argument("--site-keys", dest="site_keys", type=Path,
                   help="folder of <site>.pub audit keys: every receipt must verify")
    g.add_argument("--workdir", type=Path, help="FLWR_HOME, run config, log (default OUT/flwr)")
    g.add_argument("--run-config", dest="run_config", type=Path,
                   help="TOML file of run-config values overriding the flags above")
    g.add_argument("--app", type=Path, help="the Flower app folder (default: deploy/flwr_app "
                                            "of this source tree)")
    g.add_argument("--print-command", dest="print_command", action="store_true",
                   help="write the config files, print the flwr command, run nothing")


def add_simulate_engine_args(p: argparse.ArgumentParser) -> None:
    """``coordinator simulate`` flags of the query pipeline and of the engine choice."""
    p.add_argument("--engine", choices=["processes", "ray"], default="processes",
                   help="processes: a SuperLink and one SuperNode process per site (the compose "
                        "topology, default); ray: N virtual sites on Flower's Simulation "
                        "Engine (needs the `simulation` extra)")
    p.add_argument("--query-window", dest="query_window", type=int,
                   help=f"query chunks in flight per site, 0 = lockstep {APP_DEFAULT}")
    p.add_argument("--chunk-size", dest="chunk_size", type=int,
                   help=f"proxy slices per query message {APP_DEFAULT}")
    p.add_argument("--ray-address", dest="ray_address",
                   help="--engine ray: join this Ray cluster (e.g. 10.0.0.2:6379 or 'auto'; "
                        "default: start a local one)")
    p.add_argument("--client-cpus", dest="client_cpus", type=float, default=1.0,
                   help="--engine ray: CPUs per ClientApp actor (default 1)")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """``coordinator export --config exp.toml [--out DIR]`` (see :mod:`coordinator.export`)."""
    def run(args: argparse.Namespace) -> int:
        from coordinator.export import main_export

        return main_export(args)

    p = sub.add_parser("export", help="export the default multi-teacher student of a finished "
                                      "experiment: torch.export .pt2, ONNX fp32 and int8 "
                                      "(calibrated on the proxy set) and a model card")
    p.add_argument("--config", type=Path, required=True, help="TOML/YAML ExperimentConfig")
    p.add_argument("--out", type=Path, help="experiment folder (default: the config's out)")
    p.add_argument("--aoti", action="store_true", help="also compile an AOTInductor package "
                   "(student.aoti.pt2; needs a C++ compiler, minutes of CPU)")
    p.set_defaults(func=run)


def parse_superlink(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``; anything else is a one-line ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--superlink {text!r}: expected HOST:PORT, e.g. 10.0.0.2:8000")
    return host, int(port)


def connection_tls(args: argparse.Namespace) -> dict[str, object]:
    """The TLS keys of the federation in ``config.toml`` (CA checked to exist)."""
    if args.insecure:
        return {"insecure": True}
    ca = args.certs if args.certs.is_file() else args.certs / "ca.crt"
    if not ca.is_file():
        raise FileNotFoundError(f"{ca}: CA certificate not found (pass --certs DIR, or "
                                "--insecure for a test federation without TLS)")
    return {"root-certificates": str(ca.resolve())}


def write_connection(flwr_home: Path, address: str, tls: dict[str, object]) -> Path:
    """``FLWR_HOME/config.toml`` naming the one federation :data:`FEDERATION` at ``address``."""
    from coordinator.topology.env import write_toml

    return write_toml(flwr_home / "config.toml",
                      {"superlink": {FEDERATION: {"address": address, **tls}}})


def experiment_file(args: argparse.Namespace, cfg: ExperimentConfig, workdir: Path) -> Path:
    """The config the ServerApp reads: the user's file, or a resolved copy when overridden."""
    if not (args.paper or args.epochs is not None):
        return Path(args.config).resolve()
    import yaml

    path = workdir / "experiment.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def run_values(args: argparse.Namespace, cfg: ExperimentConfig, config: Path
               ) -> dict[str, object]:
    """The ServerApp's run config: the app's defaults, the flags given, then ``--run-config``
    values; validated as :class:`~coordinator.run_config.RunConfig` (one-line ValueError)."""
    from coordinator.run_config import RunConfig
    from coordinator.topology.env import app_defaults

    flags: dict[str, object | None] = {
        "config-path": str(config), "out": str(cfg.out), "timeout": args.round_timeout,
        "train": not args.no_train, "min-sites": args.min_sites, "chunk-size": args.chunk_size,
        "query-window": args.query_window,
        "expected-sites": int(args.expected_sites or len(cfg.sites)),
        "site-keys-dir": str(args.site_keys.resolve()) if args.site_keys is not None else None}
    values = {**app_defaults(app_dir(args)), **{k: v for k, v in flags.items() if v is not None}}
    if args.run_config is not None:
        values.update(read_run_config(args.run_config, app_dir(args)))
    return RunConfig.from_run_config(values, "run config").to_run_config()


def app_dir(args: argparse.Namespace) -> Path:
    """The Flower app folder: ``--app`` or this source tree's ``deploy/flwr_app``."""
    from coordinator.topology.env import APP_DIR

    return (args.app or APP_DIR).resolve()


def read_run_config(path: Path, app: Path) -> dict[str, object]:
    """Values of a run-config TOML file; keys the app does not declare are a one-line error."""
    import tomllib

    from coordinator.topology.env import app_defaults

    try:
        values = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"--run-config {path}: cannot read: {exc}") from None
    known = app_defaults(app)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"--run-config {path}: unknown keys {unknown} (known: {sorted(known)})")
    return values


def prepare(args: argparse.Namespace, cfg: ExperimentConfig) -> tuple[list[str], Path]:
    """Write FLWR_HOME and the run config; return the ``flwr run`` argv and the workdir."""
    from coordinator.topology.env import run_config_file

    parse_superlink(args.superlink)
    workdir = (args.workdir or cfg.out / "flwr").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    write_connection(workdir / "flwr_home", args.superlink, connection_tls(args))
    rc_file = run_config_file(workdir, run_values(args, cfg, experiment_file(args, cfg, workdir)))
    flwr = str(Path(sys.executable).parent / "flwr")
    return [flwr, "run", str(app_dir(args)), FEDERATION, "--stream", "--run-config",
            str(rc_file)], workdir


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Open (and close) a TCP connection to the SuperLink, or raise naming ``address``."""
    host, port = parse_superlink(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        raise SuperLinkUnreachable(f"cannot reach the SuperLink at {address} ({exc}); is "
                                   "flower-superlink running there?") from None


def follow(proc: subprocess.Popen, logfile: Path, timeout: float) -> int | None:
    """Echo ``logfile`` while ``proc`` runs; its exit code, or None after ``timeout`` seconds."""
    deadline, pos = time.monotonic() + timeout, 0
    while True:
        done = proc.poll() is not None
        with logfile.open("rb") as fh:
            fh.seek(pos)
            chunk = fh.read()
        pos += len(chunk)
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()
        if done:
            return proc.returncode
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) meanwhile, so ``finally`` blocks stop our children (``flwr
    run`` has its own session: a SIGTERM to our process group does not reach it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM ``proc``'s process group, SIGKILL what is left after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


def launch(cmd: list[str], workdir: Path, timeout: float) -> int:
    """Run ``flwr run`` in its own process group (always torn down), its output in
    ``WORKDIR/flwr-run.log``; its exit code or 124."""
    from coordinator.topology.env import flwr_env

    env, out = flwr_env(workdir / "flwr_home"), workdir / "flwr-run.log"
    workdir.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                start_new_session=True)
        try:
            with sigterm_as_exit():
                rc = follow(proc, out, timeout)
        finally:
            _stop_group(proc)
    if rc is None:
        log.error("%s: no result after %.0f s; see %s", PROG, timeout, out)
        stop_run(cmd[0], out, env)
        return 124
    return rc


def stop_run(flwr: str, logfile: Path, env: dict[str, str]) -> None:
    """``flwr stop RUN_ID``: a killed ``flwr run --stream`` leaves the ServerApp running."""
    import re

    m = re.search(r"started run (\d+)", logfile.read_text(errors="replace"))
    if m is None:
        return
    try:
        subprocess.run([flwr, "stop", m.group(1), FEDERATION], env=env, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        log.warning("%s: asked the SuperLink to stop run %s", PROG, m.group(1))
    except subprocess.TimeoutExpired:
        log.error("%s: could not stop run %s; use `flwr stop`", PROG, m.group(1))


def main_federated(args: argparse.Namespace, cfg: ExperimentConfig) -> int:
    """``coordinator distill --config exp.toml [--superlink HOST:PORT ...]`` without --local."""
    try:
        cmd, workdir = prepare(args, cfg)
        if args.print_command:
            print(f"FLWR_HOME={shlex.quote(str(workdir / 'flwr_home'))} {shlex.join(cmd)}")
            return 0
        check_reachable(args.superlink)
    except (ValueError, FileNotFoundError, SuperLinkUnreachable) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    start = time.time()
    rc = launch(cmd, workdir, args.timeout)
    return run_outcome(cfg.out, start, rc, workdir / "flwr-run.log")


def run_outcome(out: Path, start: float, rc: int, logfile: Path) -> int:
    """The command's exit code from the ServerApp's ``run_status.json`` (``flwr run`` exits 0
    even when the ServerApp failed): 0 when it is fresh and ok; 1 with its one-line reason
    when the run failed (too few sites, a failed export...); 3 when the ServerApp wrote none;
    ``rc`` when ``flwr run`` itself failed. Prints every expected site's state."""
    from coordinator.distill.sites import STATUS_FILE, RunStatus

    status = RunStatus.read(out)
    fresh = status is not None and (out / STATUS_FILE).stat().st_mtime >= start
    if status is not None and fresh:
        for line in status.summary_lines():
            print(f"  site {line}")
    if rc != 0 and not (fresh and status is not None and not status.ok):
        return rc
    if not fresh or status is None:
        print(f"{PROG}: error: no fresh {out / STATUS_FILE} from the ServerApp (it failed to "
              f"start, or the run was stopped before it could write it); see {logfile}",
              file=sys.stderr)
        return 3
    if not status.ok:
        print(f"{PROG}: error: the run failed: {status.reason} (see {logfile})",
              file=sys.stderr)
        return 1
    print(f"federated results: {out / 'results.md'}")  # the command's answer
    return 0
