"""``coordinator simulate``: a real Flower deployment of N sites on 127.0.0.1.

Starts one ``flower-superlink`` and one ``flower-supernode`` per site (each its own process
group, logs in ``WORKDIR/logs/``), writes ``WORKDIR/flwr_home/config.toml``, runs
``flwr run deploy/flwr_app local-deployment --stream`` and always tears every process down.
TLS is on unless ``insecure``; every site signs its exchange log and the coordinator verifies
the receipts (see :mod:`coordinator.security`).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from coordinator.security import Security, prepare_security

APP_DIR = Path(__file__).resolve().parents[1] / "deploy" / "flwr_app"
HOST = "127.0.0.1"


@dataclass
class SiteNode:
    """One simulated hospital: its name, private data folder and teacher run folder."""

    name: str
    data: Path
    teacher_dir: Path
    compression: str = "fp16"  # how its query logits are encoded (node config ``compression``)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen) -> None:
    """Block until something listens on ``HOST:port``; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout:.0f} s")


def flwr_env(flwr_home: Path) -> dict[str, str]:
    """Environment of every Flower process: no telemetry, our venv first on PATH.

    N + 1 processes share this machine's cores, so each gets one OpenMP/MKL thread unless the
    caller set otherwise (spinning OpenMP threads on oversubscribed cores slow torch ~10x).
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    bindir = str(Path(sys.executable).parent)
    env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_HOME=str(flwr_home), PYTHONUNBUFFERED="1",
               PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}")
    return env


def write_flwr_config(flwr_home: Path, port: int, tls_lines: str = "insecure = true\n") -> Path:
    """``FLWR_HOME/config.toml`` with a ``local-deployment`` connection to our SuperLink."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(f'[superlink.local-deployment]\naddress = "{HOST}:{port}"\n{tls_lines}')
    return path


def node_config(site: SiteNode, sec: Security | None = None) -> str:
    """``--node-config`` value for ``site`` (TOML strings, so paths keep their characters)."""
    def q(v: object) -> str:
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    out = f"data-path={q(site.data)} teacher-dir={q(site.teacher_dir)} site-name={q(site.name)}"
    if sec is not None:
        out += f" state-dir={q(sec.site_state(site.name))} audit-key={q(sec.site_key(site.name))}"
    if site.compression != "fp16":
        out += f" compression={q(site.compression)}"
    return out


class Processes:
    """Started processes, each in its own session; ``stop_all`` ends them and their children."""

    def __init__(self, logs: Path, env: dict[str, str], cwd: Path) -> None:
        self.logs, self.env, self.cwd = logs, env, cwd
        self.procs: list[subprocess.Popen] = []
        self.files: list[IO[bytes]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        """Start ``argv`` with stdout+stderr to ``logs/<name>.log``."""
        fh = (self.logs / f"{name}.log").open("wb")
        self.files.append(fh)
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                cwd=self.cwd, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 10.0) -> None:
        """SIGTERM the process group of ``proc``, then SIGKILL after ``grace`` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                if sig == signal.SIGKILL:
                    return
            except subprocess.TimeoutExpired:
                continue
            try:  # the leader is gone; make sure no child of its group survives
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return

    def stop_all(self) -> None:
        """Stop every process (last started first) and close the log files."""
        for proc in reversed(self.procs):
            self.stop(proc)
        for fh in self.files:
            fh.close()


def register_nodes(procs: Processes, sites: list[SiteNode], sec: Security) -> None:
    """``flwr supernode register`` each site's public key (SuperLink node auth)."""
    flwr = str(Path(sys.executable).parent / "flwr")
    for site in sites:
        argv = [flwr, "supernode", "register", str(sec.node_pub(site.name)), "local-deployment",
                "--name", site.name]
        out = subprocess.run(argv, env=procs.env, cwd=procs.cwd, capture_output=True, text=True,
                             timeout=120, check=False)
        (procs.logs / f"register-{site.name}.log").write_text(out.stdout + out.stderr)
        if out.returncode != 0 or "registered successfully" not in out.stdout:
            raise RuntimeError(f"flwr supernode register {site.name} failed; see {procs.logs}")


def start_federation(procs: Processes, sites: list[SiteNode], sec: Security,
                     fleet_port: Callable[[int], int] | None = None) -> int:
    """SuperLink + one SuperNode per site; returns the SuperLink port.

    ``fleet_port(port)`` may return another port for the SuperNodes to dial (a test's
    recording proxy in front of the SuperLink).
    """
    bindir = Path(sys.executable).parent
    port = free_port()
    link = procs.start("superlink", [
        str(bindir / "flower-superlink"), *sec.superlink_args(),
        "--disable-runtime-dependency-installation",
        "--host", HOST, "--port", str(port)])  # in-memory state: a sqlite file got locked
    wait_port(port, 60, link)
    write_flwr_config(Path(procs.env["FLWR_HOME"]), port, sec.flwr_connection())
    if sec.node_auth:
        register_nodes(procs, sites, sec)
    dial = fleet_port(port) if fleet_port else port
    for site in sites:
        procs.start(f"supernode-{site.name}", [
            str(bindir / "flower-supernode"), *sec.supernode_args(site.name), "--superlink",
            f"{HOST}:{dial}", "--host", HOST, "--port", str(free_port()), "--node-config",
            node_config(site, sec)])
    return port


def run_config_file(workdir: Path, values: dict[str, object]) -> Path:
    """A TOML file of run-config overrides for ``flwr run --run-config FILE``."""
    import json

    lines = [f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
             for k, v in values.items()]
    path = workdir / "run_config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def simulate(sites: list[SiteNode], config: Path, workdir: Path, run_config: dict[str, object],
             timeout: float = 900.0, insecure: bool = False,
             fleet_port: Callable[[int], int] | None = None, node_auth: bool = False) -> int:
    """Run the federated experiment on a local deployment; 0 only if results were written.

    ``flwr run --stream`` exits 0 even when the ServerApp failed, so success is judged by a
    fresh ``federated_results.json`` in the experiment's out folder.
    """
    results = experiment_out(config) / "federated_results.json"
    start = time.time()
    rc = _simulate(sites, config, workdir, run_config, timeout, insecure, fleet_port, node_auth)
    if rc == 0 and not (results.exists() and results.stat().st_mtime >= start):
        print(f"coordinator simulate: the ServerApp wrote no {results}; see "
              f"{workdir / 'logs'}", file=sys.stderr)
        return 3
    return rc


def experiment_out(config: Path) -> Path:
    """The out folder of the ExperimentConfig at ``config`` (resolved like the ServerApp does)."""
    from common.config import load_config
    from coordinator.distill.config import ExperimentConfig

    return load_config(config, ExperimentConfig).resolve_paths(config.parent.resolve()).out


def _simulate(sites: list[SiteNode], config: Path, workdir: Path, run_config: dict[str, object],
              timeout: float, insecure: bool,
              fleet_port: Callable[[int], int] | None, node_auth: bool) -> int:
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    sec = prepare_security(workdir, [s.name for s in sites], insecure, node_auth)
    env = flwr_env(workdir / "flwr_home")
    procs = Processes(workdir / "logs", env, workdir)
    with ExitStack() as stack:
        stack.callback(procs.stop_all)
        start_federation(procs, sites, sec, fleet_port)
        rc_file = run_config_file(workdir, {"config-path": str(config.resolve()),
                                            "expected-sites": len(sites),
                                            "site-keys-dir": str(sec.site_keys), **run_config})
        bindir = Path(sys.executable).parent
        run = procs.start("flwr-run", [str(bindir / "flwr"), "run", str(APP_DIR),
                                       "local-deployment", "--stream", "--run-config",
                                       str(rc_file)])
        try:
            return run.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"coordinator simulate: no result after {timeout:.0f} s; see {procs.logs}",
                  file=sys.stderr)
            return 124
    return 1  # pragma: no cover (ExitStack does not swallow exceptions)


def sites_from_config(config: Path, n: int) -> list[SiteNode]:
    """The first ``n`` sites of an ExperimentConfig (paths resolved against its folder)."""
    from common.config import load_config
    from coordinator.distill.config import ExperimentConfig

    cfg = load_config(config, ExperimentConfig).resolve_paths(config.parent.resolve())
    if n > len(cfg.sites):
        raise ValueError(f"{config}: --sites {n} but the config lists {len(cfg.sites)} sites")
    return [SiteNode(s.name, s.data, s.teacher_dir) for s in cfg.sites[:n]]


def main_simulate(args: argparse.Namespace) -> int:
    """``coordinator simulate --sites N --config exp.toml --workdir DIR``."""
    sites = sites_from_config(args.config, args.sites)
    for site in sites:
        site.compression = getattr(args, "compression", "fp16")
    extra: dict[str, object] = {"timeout": float(args.round_timeout), "train": not args.no_train}
    if args.min_sites:
        extra["min-sites"] = args.min_sites
    rc = simulate(sites, args.config, args.workdir, extra, timeout=args.timeout,
                  insecure=getattr(args, "insecure", False),
                  node_auth=getattr(args, "node_auth", False))
    log = args.workdir / "logs" / "flwr-run.log"
    print(log.read_text(errors="replace")[-4000:] if log.exists() else "")
    print(f"coordinator simulate: flwr run exited with {rc}; logs in {args.workdir / 'logs'}")
    return 0 if rc == 0 else 1
