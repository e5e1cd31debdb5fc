"""``coordinator simulate``: the docker-compose deployment as local processes on 127.0.0.1.

Every role is started through ``deploy/entrypoints/entrypoint.sh ROLE``, the containers'
entrypoint, configured only through the environment variables docker-compose.yml sets
(:func:`role_envs`; 127.0.0.1 and free ports instead of service names), so the two cannot drift:
``init-certs`` (TLS, node-auth and audit keys under ``WORKDIR/certs``; run to completion), the
``superlink`` (waited for with ``healthcheck.sh``), the ``coordinator`` (registers the sites,
is then healthy, runs the ServerApp through a ``flower-superexec`` and drives the run with
``coordinator distill``) and one ``site`` per :class:`SiteNode` (``site-node run``). Each
process is its own session, stopped with its children on exit or timeout; logs in
``WORKDIR/logs/<name>.log``, marker files in ``WORKDIR/run/<name>/``. TLS with SuperNode
authentication unless ``insecure``; every site signs its egress log and the coordinator
verifies the receipts. Success means a fresh ``federated_results.json``.
"""

from __future__ import annotations

import argparse
import json
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

from coordinator.security import INSECURE_WARNING, CertsLayout

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = ROOT / "deploy" / "flwr_app"
ENTRYPOINTS = ROOT / "deploy" / "entrypoints"
HOST = "127.0.0.1"
IN_MEMORY_DB = ":flwr-in-memory:"  # Flower's in-memory SuperLink state (no sqlite file)


@dataclass
class SiteNode:
    """One simulated hospital: its name, private data folder and teacher run folder."""

    name: str
    data: Path
    teacher_dir: Path
    compression: str = "fp16"  # how its query logits are encoded (node config ``compression``)


@dataclass(frozen=True)
class Plan:
    """Everything the roles' environments are built from (:func:`role_envs`)."""

    workdir: Path
    sites: tuple[SiteNode, ...]
    config: Path  # the ExperimentConfig file
    out: Path  # its out folder
    proxy: Path  # its proxy folder
    tls: bool
    superlink_port: int
    dial_port: int  # what the sites dial (a test's proxy in front of the SuperLink)
    node_ports: tuple[int, ...]  # each site's ClientApp runtime port
    round_timeout: float = 300.0
    run_timeout: float = 3600.0
    run_config: Path | None = None  # extra run-config TOML (RUN_CONFIG)
    uid: int = 10001  # owner of the generated keys (FEDMTKD_UID)

    @property
    def certs(self) -> CertsLayout:
        """Where init-certs writes."""
        return CertsLayout(self.workdir / "certs")


@dataclass(frozen=True)
class Role:
    """One process to start: its log/marker name, its entrypoint role and its environment."""

    name: str
    role: str
    env: dict[str, str]


def role_envs(plan: Plan) -> list[Role]:
    """init-certs, superlink, coordinator and one site per :class:`SiteNode`, in start order,
    each with the variables docker-compose.yml sets for that service (no other configuration)."""
    roles = [Role("init-certs", "init-certs", init_env(plan)),
             Role("superlink", "superlink", superlink_env(plan)),
             Role("coordinator", "coordinator", coordinator_env(plan))]
    roles += [Role(f"site-{s.name}", "site", site_env(plan, s, port))
              for s, port in zip(plan.sites, plan.node_ports, strict=True)]
    for r in roles:
        r.env["RUNTIME_DIR"] = str(plan.workdir / "run" / r.name)
    return roles


def init_env(plan: Plan) -> dict[str, str]:
    """Environment of ``init-certs`` (no RESULTS_DIR: nothing to hand over)."""
    return {"CERTS_DIR": str(plan.certs.root), "SITES": ",".join(s.name for s in plan.sites),
            "SUPERLINK_HOSTS": f"localhost,{HOST}", "RESULTS_DIR": "",
            "FEDMTKD_UID": str(plan.uid)}


def superlink_env(plan: Plan) -> dict[str, str]:
    """Environment of ``superlink`` (in-memory state, listening on 127.0.0.1 only)."""
    c = plan.certs
    return {"TLS": "on" if plan.tls else "off", "SUPERLINK_BIND_HOST": HOST,
            "SUPERLINK_PORT": str(plan.superlink_port), "CA_CERT": str(c.ca),
            "SERVER_CERT": str(c.server_cert), "SERVER_KEY": str(c.server_key),
            "SUPEREXEC_SECRET": str(c.superexec_secret), "SUPERLINK_DB": IN_MEMORY_DB}


def coordinator_env(plan: Plan) -> dict[str, str]:
    """Environment of ``coordinator`` (results stay in the experiment's out folder)."""
    c = plan.certs
    return {"TLS": "on" if plan.tls else "off", "SUPERLINK_HOST": HOST,
            "SUPERLINK_PORT": str(plan.superlink_port), "CA_CERT": str(c.ca),
            "SUPEREXEC_SECRET": str(c.superexec_secret),
            "SITES": ",".join(s.name for s in plan.sites), "NODE_AUTH_KEYS_DIR": str(c.node_keys),
            "AUDIT_KEYS_DIR": str(c.audit_keys), "APP_DIR": str(APP_DIR),
            "EXPERIMENT_CONFIG": str(plan.config), "EXPERIMENT_OUT": str(plan.out),
            "PROXY_DIR": str(plan.proxy), "PROXY_CASES": "9", "RESULTS_DIR": str(plan.out),
            "COORDINATOR_WORKDIR": str(plan.workdir / "coordinator"),
            "ROUND_TIMEOUT": str(plan.round_timeout), "RUN_TIMEOUT": str(plan.run_timeout),
            "WAIT_TIMEOUT": "60", "RUN_CONFIG": str(plan.run_config or "")}


def site_env(plan: Plan, site: SiteNode, port: int) -> dict[str, str]:
    """Environment of one ``site`` (its data and teacher as given; no phantom, no training at
    start: the coordinator's ``train`` message trains a missing teacher)."""
    c = plan.certs
    return {"TLS": "on" if plan.tls else "off", "SITE_NAME": site.name,
            "SITE_DATA": str(site.data), "SITE_RUN": str(site.teacher_dir),
            "SITE_STATE": str(plan.workdir / "sites" / site.name), "SITE_PHANTOM": "never",
            "SITE_TRAIN_ON_START": "never", "SITE_COMPRESSION": site.compression,
            "SITE_AUDIT_KEY": str(c.audit_key(site.name)),
            "SUPERLINK_ADDRESS": f"{HOST}:{plan.dial_port}", "SUPERNODE_BIND_HOST": HOST,
            "SUPERNODE_PORT": str(port), "CA_CERT": str(c.public_ca),
            "SITE_KEY": str(c.node_key(site.name))}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def base_env() -> dict[str, str]:
    """Environment under every process: ours, no telemetry, our venv first on PATH (the
    entrypoints call ``python``, ``site-node``, ``coordinator``, ``flwr`` by name).

    N + 2 processes share this machine's cores, so each gets one OpenMP/MKL thread unless the
    caller set otherwise (spinning OpenMP threads on oversubscribed cores slow torch ~10x).
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    bindir = str(Path(sys.executable).parent)
    env.update(FLWR_TELEMETRY_ENABLED="0", PYTHONUNBUFFERED="1",
               PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}")
    return env


def flwr_env(flwr_home: Path) -> dict[str, str]:
    """:func:`base_env` with ``FLWR_HOME`` (the ``flwr`` CLI's config folder)."""
    return {**base_env(), "FLWR_HOME": str(flwr_home)}


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
        return proc

    def stop(self, procs: list[subprocess.Popen], grace: float = 10.0) -> None:
        """SIGTERM the process groups of ``procs`` at once, SIGKILL what is left of each group
        once its leader exited or ``grace`` seconds passed."""
        deadline = time.monotonic() + grace
        for proc in procs:
            _killpg(proc, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            _killpg(proc, signal.SIGKILL)  # the leader's children, or a leader that hangs
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


def _killpg(proc: subprocess.Popen, sig: int) -> None:
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
            return
        time.sleep(0.3)
    raise TimeoutError(f"{role.name} not healthy after {timeout:.0f} s; see "
                       f"{procs.logs / role.name}.log")


def start_topology(procs: Processes, plan: Plan) -> None:
    """init-certs (to completion), superlink (healthy), coordinator (healthy: sites
    registered), then every site, as docker-compose.yml orders them."""
    init, link, coord, *sites = role_envs(plan)
    rc = start_role(procs, init).wait(timeout=120)
    if rc != 0:
        raise RuntimeError(f"init-certs exited with {rc}; see {procs.logs / 'init-certs.log'}")
    start_role(procs, link)
    wait_healthy(procs, link, 60)
    start_role(procs, coord)
    wait_healthy(procs, coord, 120)
    for site in sites:
        start_role(procs, site)


def make_plan(sites: list[SiteNode], config: Path, workdir: Path, run_config: dict[str, object],
              timeout: float, insecure: bool,
              fleet_port: Callable[[int], int] | None = None) -> Plan:
    """Free ports, the experiment's folders and the extra run config (``timeout`` becomes
    ROUND_TIMEOUT, other keys go to ``WORKDIR/simulate_run_config.toml``)."""
    from common.config import load_config
    from coordinator.distill.config import ExperimentConfig

    config = config.resolve()
    cfg = load_config(config, ExperimentConfig).resolve_paths(config.parent)
    extra = {k: v for k, v in run_config.items() if k != "timeout"}
    rc_file = run_config_file(workdir, extra, "simulate_run_config.toml") if extra else None
    port = free_port()
    return Plan(workdir, tuple(sites), config, cfg.out, cfg.proxy, not insecure, port,
                fleet_port(port) if fleet_port else port,
                tuple(free_port() for _ in sites),
                float(run_config.get("timeout", 300.0)),  # type: ignore[arg-type]
                timeout, rc_file, os.getuid())


def run_config_file(workdir: Path, values: dict[str, object],
                    name: str = "run_config.toml") -> Path:
    """A TOML file of run-config values (``flwr run --run-config FILE``, ``RUN_CONFIG``)."""
    lines = [f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
             for k, v in values.items()]
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / name
    path.write_text("\n".join(lines) + "\n")
    return path


def simulate(sites: list[SiteNode], config: Path, workdir: Path, run_config: dict[str, object],
             timeout: float = 900.0, insecure: bool = False,
             fleet_port: Callable[[int], int] | None = None,
             on_start: Callable[[Processes], None] | None = None) -> int:
    """Run the federated experiment on a local deployment; 0 only if results were written.

    ``fleet_port(port)`` may return another port for the sites to dial (a test's recording
    proxy in front of the SuperLink); ``on_start(procs)`` is called once every role started.
    """
    results = experiment_out(config) / "federated_results.json"
    start = time.time()
    rc = _simulate(sites, config, workdir.resolve(), run_config, timeout, insecure, fleet_port,
                   on_start)
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
              timeout: float, insecure: bool, fleet_port: Callable[[int], int] | None,
              on_start: Callable[[Processes], None] | None) -> int:
    if insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
    plan = make_plan(sites, config, workdir, run_config, timeout, insecure, fleet_port)
    procs = Processes(workdir / "logs", base_env(), workdir)
    with ExitStack() as stack:
        stack.callback(procs.stop_all)
        start_topology(procs, plan)
        if on_start is not None:
            on_start(procs)
        try:  # coordinator distill gives up after RUN_TIMEOUT by itself (flwr stop, 124)
            return procs.named["coordinator"].wait(timeout=timeout + 60)
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
                  insecure=getattr(args, "insecure", False))
    log = args.workdir / "logs" / "coordinator.log"
    print(log.read_text(errors="replace")[-4000:] if log.exists() else "")
    print(f"coordinator simulate: the coordinator exited with {rc}; logs in "
          f"{args.workdir / 'logs'}")
    return 0 if rc == 0 else 1
