"""``coordinator simulate``: the docker-compose deployment as local processes on 127.0.0.1.

Orchestration only: the environments come from :mod:`coordinator.topology.env`, the processes
are run by :mod:`coordinator.topology.supervisor`, the sites are watched by
:mod:`coordinator.topology.watch`. Every role is started through
``deploy/entrypoints/entrypoint.sh ROLE``: ``init-certs`` (CA and SuperLink TLS material under
``WORKDIR/certs``; run to completion), one ``site-keys`` per site (``site-node keys init`` in
``WORKDIR/sites/<site>/keys``; only the ``.pub`` files go to ``WORKDIR/pubkeys``), the
``superlink`` (waited for with ``healthcheck.sh``), the ``coordinator`` (registers the sites'
public keys, is then healthy, runs the ServerApp through a
``flower-superexec`` and drives the run with ``coordinator distill``) and one ``site`` per
:class:`SiteNode` (``site-node run``). Logs in ``WORKDIR/logs/<name>.log``, marker files in
``WORKDIR/run/<name>/``. TLS with SuperNode authentication unless ``insecure``; every site signs
its egress log and the coordinator verifies the receipts. Success means a fresh
``run_status.json`` that says ``ok`` (or, from an older ServerApp, ``federated_results.json``).

Ports: all ports of a plan are chosen at once, each socket held until all are (so they are
distinct); a SuperLink or site that finds its port taken when it starts is started again on a
fresh one. Every site is watched until the coordinator ends: a site that exits or never becomes
healthy fails the run (exit code :data:`SITE_FAILED`, one line naming the site and its log)
unless the experiment opts into fewer sites (``min_sites`` in the config, ``--min-sites``). The
out folder must not be in use by another run (:mod:`common.lock`; exit code 2).

``--engine ray`` (:func:`simulate_ray`) runs the same ServerApp and ClientApp on Flower's
Simulation Engine instead (:mod:`coordinator.topology.ray_engine`): N virtual sites, each with
its own data, teacher, state folder, signed egress log and audit key; no TLS (no network).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from coordinator.security import INSECURE_WARNING
from coordinator.topology.env import (
    Role,
    SiteNode,
    Topology,
    app_defaults,
    base_env,
    role_envs,
    run_config_file,
)
from coordinator.topology.supervisor import (
    PortAllocator,
    Processes,
    RoleFailed,
    allocate_ports,
    distinct_ports,
    owns_port,
    plan_ports,
    port_clash,
    start_role,
    start_topology,
)
from coordinator.topology.watch import (
    HEALTH_WINDOW,
    ProcLike,
    SiteWatch,
    WatchedSite,
    run_written,
    site_summary,
)

if TYPE_CHECKING:
    from coordinator.distill.config import ExperimentConfig

log = logging.getLogger(__name__)

__all__ = ["Outcome", "Topology", "Processes", "SiteNode", "free_port", "make_plan", "simulate",
           "simulate_ray"]

#: ``simulate``'s exit code when a site or the SuperLink failed (or never became healthy).
SITE_FAILED = 4
RESULT_FILES = ("run_status.json", "federated_results.json")


@dataclass
class Outcome:
    """How a simulated run ended: the exit code, the failure line ("" when none) and one
    summary line per expected site."""

    rc: int
    failure: str = ""
    summary: list[str] = field(default_factory=list)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return allocate_ports(1)[0]


def make_plan(sites: list[SiteNode], config: Path, workdir: Path, run_config: dict[str, object],
              timeout: float, insecure: bool,
              fleet_port: Callable[[int], int] | None = None,
              ports: PortAllocator = allocate_ports) -> Topology:
    """Ports (all distinct, from ``ports``), the experiment's folders and the extra run config
    (``timeout`` becomes ROUND_TIMEOUT, other keys go to ``WORKDIR/simulate_run_config.toml``)."""
    from common.config import load_config
    from coordinator.distill.config import ExperimentConfig

    config = config.resolve()
    cfg = load_config(config, ExperimentConfig).resolve_paths(config.parent)
    extra = {k: v for k, v in run_config.items() if k != "timeout"}
    rc_file = run_config_file(workdir, extra, "simulate_run_config.toml") if extra else None
    port, *node_ports = distinct_ports(1 + len(sites), ports)
    return Topology(workdir, tuple(sites), config, cfg.out, cfg.proxy, not insecure, port,
                fleet_port(port) if fleet_port else port, tuple(node_ports),
                float(run_config.get("timeout", app_defaults()["timeout"])),  # type: ignore[arg-type]
                timeout, rc_file, os.getuid(), weight_release=weight_release(cfg))


def weight_release(cfg: ExperimentConfig) -> bool:
    """Whether the sites' policies allow FedAvg (weights leave): only when the experiment has
    a FedAvg, FedProx or FedBN baseline (``[runs.fedavg]`` ...); otherwise they keep the
    default deny. Logged."""
    if cfg.runs.fedavg is None and cfg.runs.fedprox is None and cfg.runs.fedbn is None:
        log.info("no FedAvg baseline in the config: sites keep the default policy (no model "
                 "weights leave)")
        return False
    log.warning("FedAvg baseline in the config: weight release ENABLED in each site's "
                "policy (site-node run --allow-weight-release); weights leave the sites")
    return True


def required_sites(config: Path, run_config: dict[str, object], n_sites: int) -> int:
    """Sites that must stay up: ``min-sites`` of the run config, else ``min_sites`` when the
    config sets it, else all ``n_sites`` (at most ``n_sites``)."""
    from common.config import load_config
    from coordinator.distill.config import ExperimentConfig

    cfg = load_config(config, ExperimentConfig)
    explicit = cfg.min_sites if "min_sites" in cfg.model_fields_set else 0
    asked = int(run_config.get("min-sites") or 0) or int(explicit or 0)  # type: ignore[call-overload]
    return min(asked or n_sites, n_sites)


def simulate(sites: list[SiteNode], config: Path, workdir: Path, run_config: dict[str, object],
             timeout: float = 900.0, insecure: bool = False,
             fleet_port: Callable[[int], int] | None = None,
             on_start: Callable[[Processes], None] | None = None,
             ports: PortAllocator = allocate_ports) -> int:
    """Run the federated experiment on a local deployment; 0 only if the run was written,
    :data:`SITE_FAILED` when a site failed the run (:func:`simulate_outcome`)."""
    return simulate_outcome(sites, config, workdir, run_config, timeout, insecure, fleet_port,
                            on_start, ports).rc


def simulate_outcome(sites: list[SiteNode], config: Path, workdir: Path,
                     run_config: dict[str, object], timeout: float = 900.0,
                     insecure: bool = False, fleet_port: Callable[[int], int] | None = None,
                     on_start: Callable[[Processes], None] | None = None,
                     ports: PortAllocator = allocate_ports) -> Outcome:
    """:func:`simulate` with the failure line and the per-site summary (also logged).

    ``fleet_port(port)`` may return another port for the sites to dial (a test's recording
    proxy in front of the SuperLink; called again if the SuperLink moves to a fresh port);
    ``on_start(procs)`` is called once every role started; ``ports(n)``: n free ports."""
    from common.lock import probe_out_folder

    out = experiment_out(config)
    probe_out_folder(out)  # another run writes there: one line, exit 2, nothing started
    start = time.time()
    outcome = _simulate(sites, config, workdir.resolve(), run_config,
                        (timeout, insecure), (fleet_port, on_start, ports), out, start)
    if outcome.rc == 0 and not run_written(out, start):
        log.error("the ServerApp wrote no successful %s; see %s", out / RESULT_FILES[0],
                  workdir / "logs")
        outcome.rc = 3
    for line in outcome.summary:
        log.info("site summary: %s", line)
    return outcome


def experiment_out(config: Path) -> Path:
    """The out folder of the ExperimentConfig at ``config`` (resolved like the ServerApp does)."""
    from common.config import load_config
    from coordinator.distill.config import ExperimentConfig

    return load_config(config, ExperimentConfig).resolve_paths(config.parent.resolve()).out


Hooks = tuple[Callable[[int], int] | None, Callable[[Processes], None] | None, PortAllocator]


def _simulate(sites: list[SiteNode], config: Path, workdir: Path, run_config: dict[str, object],
              limits: tuple[float, bool], hooks: Hooks, out: Path, start: float) -> Outcome:
    (timeout, insecure), (fleet_port, on_start, ports) = limits, hooks
    if insecure:
        log.warning(INSECURE_WARNING)
    plan = make_plan(sites, config, workdir, run_config, timeout, insecure, fleet_port, ports)
    procs = Processes(workdir / "logs", base_env(), workdir)
    with ExitStack() as stack:
        stack.callback(procs.stop_all)
        try:
            plan = start_topology(procs, plan, fleet_port)
        except RoleFailed as exc:
            log.error("%s", exc)
            return Outcome(SITE_FAILED, str(exc), [f"{s.name}: not started" for s in sites])
        watch = site_watch(procs, plan, required_sites(config, run_config, len(sites)))
        log.info("%d site(s) started; logs in %s", len(sites), procs.logs)
        if on_start is not None:
            on_start(procs)
        rc, why = run_watched(procs, watch, timeout)
        fresh = any(p.exists() and p.stat().st_mtime >= start for p in
                    (out / f for f in RESULT_FILES))
        return Outcome(rc, why, site_summary(watch.sites, out, fresh))
    raise AssertionError("unreachable")  # pragma: no cover (ExitStack does not swallow)


def site_watch(procs: Processes, plan: Topology, required: int) -> SiteWatch:
    """A :class:`SiteWatch` over the plan's site processes; a site whose port was taken is
    started again on a fresh port (its role environment rebuilt from the plan). Health window:
    :data:`HEALTH_WINDOW`, or the round timeout (how long the ServerApp waits for the sites) if
    longer."""
    current = {"plan": plan}

    def restart(site: WatchedSite) -> tuple[ProcLike, int]:
        p = current["plan"]
        taken = plan_ports(p) | {s.port for s in watch.sites}
        (port,) = distinct_ports(1, exclude=taken)
        i = [s.name for s in p.sites].index(site.name)
        p = replace(p, node_ports=p.node_ports[:i] + (port,) + p.node_ports[i + 1:])
        current["plan"] = p
        role: Role = next(r for r in role_envs(p) if r.name == f"site-{site.name}")
        return start_role(procs, role), port

    watch = SiteWatch([WatchedSite(s.name, procs.log_file(f"site-{s.name}"), port,
                                   procs.named[f"site-{s.name}"])
                       for s, port in zip(plan.sites, plan.node_ports, strict=True)],
                      required, owns_port, restart, port_clash=port_clash,
                      window=max(HEALTH_WINDOW, plan.round_timeout))
    return watch


def run_watched(procs: Processes, watch: SiteWatch, timeout: float,
                poll: float = 0.5) -> tuple[int, str]:
    """Wait for the coordinator (its exit code, "") while watching the sites and the
    SuperLink; ``(SITE_FAILED, line)`` on the first failure the run cannot survive, ``(124,
    line)`` after ``timeout`` + 60 s (``coordinator distill`` gives up after RUN_TIMEOUT by
    itself: flwr stop, 124)."""
    coord, link = procs.named["coordinator"], procs.named["superlink"]
    deadline = time.monotonic() + timeout + 60
    while (rc := coord.poll()) is None:
        why = watch.step()
        if why is None and link.poll() is not None:
            why = (f"the SuperLink exited with {link.returncode} before the run ended; see "
                   f"{procs.log_file('superlink')}")
        if why is not None:
            log.error("%s", why)
            return SITE_FAILED, why
        if time.monotonic() > deadline:
            why = f"no result after {timeout:.0f} s; see {procs.logs}"
            log.error("%s", why)
            return 124, why
        try:
            coord.wait(timeout=poll)
        except subprocess.TimeoutExpired:
            pass
    return rc, ""


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
    from common.lock import probe_out_folder
    from coordinator.run_config import RunConfig
    from coordinator.topology import ray_engine

    probe_out_folder(experiment_out(config))  # another run writes there: exit 2
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
    out = experiment_out(config)
    if rc == 0 and not run_written(out, start):
        log.error("the ServerApp wrote no successful %s; see %s", out / RESULT_FILES[0],
                  procs.logs)
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
    the tail of the coordinator's log (the run's outcome), every expected site with its state
    and, last, one line: how the run ended (a failed site named with its log, on stderr)."""
    sites = sites_from_config(args.config, args.sites)
    for site in sites:
        site.compression = getattr(args, "compression", "fp16")
    extra = run_config_flags(args)
    if getattr(args, "engine", "processes") == "ray":
        rc = simulate_ray(sites, args.config, args.workdir, extra, timeout=args.timeout,
                          ray_address=args.ray_address, client_cpus=args.client_cpus)
        from coordinator.topology.watch import result_states

        states = result_states(experiment_out(args.config), [s.name for s in sites])
        outcome = Outcome(rc, "", [f"{n}: {v}" for n, v in states.items()])
    else:
        outcome = simulate_outcome(sites, args.config, args.workdir, extra,
                                   timeout=args.timeout, insecure=getattr(args, "insecure", False))
    coord_log = args.workdir / "logs" / "coordinator.log"
    print(coord_log.read_text(errors="replace")[-4000:] if coord_log.exists() else "")
    print("sites:\n" + "\n".join(f"  {line}" for line in outcome.summary))
    if outcome.failure:
        print(f"coordinator simulate: {outcome.failure}", file=sys.stderr)
    else:
        print(f"coordinator simulate: the coordinator exited with {outcome.rc}; logs in "
              f"{args.workdir / 'logs'}")
    return 0 if outcome.rc == 0 else 1
