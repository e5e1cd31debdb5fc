"""``coordinator simulate``: the docker-compose deployment as local processes on 127.0.0.1.

Orchestration only: the environments come from :mod:`coordinator.topology.env`, the processes
are run by :mod:`coordinator.topology.supervisor`. Every role is started through
``deploy/entrypoints/entrypoint.sh ROLE``: ``init-certs`` (CA and SuperLink TLS material under
``WORKDIR/certs``; run to completion), one ``site-keys`` per site (``site-node keys init`` in
``WORKDIR/sites/<site>/keys``; only the ``.pub`` files go to ``WORKDIR/pubkeys``), the
``superlink`` (waited for with ``healthcheck.sh``), the ``coordinator`` (registers the sites'
public keys, is then healthy, runs the ServerApp through a
``flower-superexec`` and drives the run with ``coordinator distill``) and one ``site`` per
:class:`SiteNode` (``site-node run``). Logs in ``WORKDIR/logs/<name>.log``, marker files in
``WORKDIR/run/<name>/``. TLS with SuperNode authentication unless ``insecure``; every site signs
its egress log and the coordinator verifies the receipts. Success means a fresh
``federated_results.json``.

``--engine ray`` (:func:`simulate_ray`) runs the same ServerApp and ClientApp on Flower's
Simulation Engine instead (:mod:`coordinator.topology.ray_engine`): N virtual sites, each with
its own data, teacher, state folder, signed egress log and audit key; no TLS (no network).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from coordinator.security import INSECURE_WARNING
from coordinator.topology.env import (
    HOST,
    Plan,
    SiteNode,
    app_defaults,
    base_env,
    run_config_file,
)
from coordinator.topology.supervisor import Processes, start_topology

if TYPE_CHECKING:
    from coordinator.distill.config import ExperimentConfig

log = logging.getLogger(__name__)

__all__ = ["Plan", "Processes", "SiteNode", "free_port", "make_plan", "simulate",
           "simulate_ray"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


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
                float(run_config.get("timeout", app_defaults()["timeout"])),  # type: ignore[arg-type]
                timeout, rc_file, os.getuid(), weight_release=weight_release(cfg))


def weight_release(cfg: ExperimentConfig) -> bool:
    """Whether the sites' policies allow FedAvg (weights leave): only when the experiment has
    a FedAvg baseline (``[runs.fedavg]``); otherwise they keep the default deny. Logged."""
    if cfg.runs.fedavg is None:
        log.info("no FedAvg baseline in the config: sites keep the default policy (no model "
                 "weights leave)")
        return False
    log.warning("FedAvg baseline in the config: weight release ENABLED in each site's "
                "policy (site-node run --allow-weight-release); weights leave the sites")
    return True


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
        log.error("the ServerApp wrote no %s; see %s", results, workdir / "logs")
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
        log.warning(INSECURE_WARNING)
    plan = make_plan(sites, config, workdir, run_config, timeout, insecure, fleet_port)
    procs = Processes(workdir / "logs", base_env(), workdir)
    with ExitStack() as stack:
        stack.callback(procs.stop_all)
        start_topology(procs, plan)
        log.info("%d site(s) started; logs in %s", len(sites), procs.logs)
        if on_start is not None:
            on_start(procs)
        try:  # coordinator distill gives up after RUN_TIMEOUT by itself (flwr stop, 124)
            return procs.named["coordinator"].wait(timeout=timeout + 60)
        except subprocess.TimeoutExpired:
            log.error("no result after %.0f s; see %s", timeout, procs.logs)
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


def simulate_ray(sites: list[SiteNode], config: Path, workdir: Path,
                 run_config: dict[str, object], timeout: float = 900.0,
                 ray_address: str | None = None, client_cpus: float = 1.0,
                 capture: Path | None = None) -> int:
    """The same experiment on Flower's Simulation Engine (:mod:`coordinator.topology.ray_engine`)
    in one process logging to ``WORKDIR/logs/coordinator.log``; 0 only if results were written.

    ``query-window`` defaults to 1 here: a SuperNode runs one message at a time, a Ray actor
    pool would otherwise run two chunks of one virtual site at once (the pool is kept busy by
    the other sites). ``capture``: a test's recording tap (:class:`~coordinator.topology.
    ray_engine.SiteConfigMod`)."""
    from coordinator.run_config import RunConfig
    from coordinator.topology import ray_engine

    workdir = workdir.resolve()
    configs = ray_engine.site_configs(sites, workdir)
    values = RunConfig.from_run_config({
        **app_defaults(), "config-path": str(config.resolve()), "expected-sites": len(sites),
        "site-keys-dir": str(ray_engine.site_keys_dir(workdir)), "query-window": 1,
        **run_config}, "simulate --engine ray").to_run_config()
    spec = ray_engine.write_spec(workdir, configs, values,
                                 ray_engine.backend_config(client_cpus, ray_address), capture)
    procs, start = Processes(workdir / "logs", base_env(), workdir), time.time()
    try:
        proc = procs.start("coordinator", [sys.executable, "-m",
                                           "coordinator.topology.ray_engine", str(spec)])
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.error("no result after %.0f s; see %s", timeout, procs.logs)
        rc = 124
    finally:
        procs.stop_all()
    results = experiment_out(config) / "federated_results.json"
    if rc == 0 and not (results.exists() and results.stat().st_mtime >= start):
        log.error("the ServerApp wrote no %s; see %s", results, procs.logs)
        return 3
    return rc


def run_config_flags(args: argparse.Namespace) -> dict[str, object]:
    """The run-config values that ``coordinator simulate``'s flags set."""
    extra: dict[str, object] = {"train": not args.no_train}
    flags = {"timeout": args.round_timeout, "min-sites": args.min_sites or None,
             "chunk-size": getattr(args, "chunk_size", None),
             "query-window": getattr(args, "query_window", None)}
    extra.update({k: (float(v) if k == "timeout" else v) for k, v in flags.items()
                  if v is not None})
    return extra


def main_simulate(args: argparse.Namespace) -> int:
    """``coordinator simulate --sites N --config exp.toml --workdir DIR [--engine ray]``; prints
    the tail of the coordinator's log (the run's outcome) as its result."""
    sites = sites_from_config(args.config, args.sites)
    for site in sites:
        site.compression = getattr(args, "compression", "fp16")
    extra = run_config_flags(args)
    if getattr(args, "engine", "processes") == "ray":
        rc = simulate_ray(sites, args.config, args.workdir, extra, timeout=args.timeout,
                          ray_address=args.ray_address, client_cpus=args.client_cpus)
    else:
        rc = simulate(sites, args.config, args.workdir, extra, timeout=args.timeout,
                      insecure=getattr(args, "insecure", False))
    coord_log = args.workdir / "logs" / "coordinator.log"
    print(coord_log.read_text(errors="replace")[-4000:] if coord_log.exists() else "")
    print(f"coordinator simulate: the coordinator exited with {rc}; logs in "
          f"{args.workdir / 'logs'}")
    return 0 if rc == 0 else 1
