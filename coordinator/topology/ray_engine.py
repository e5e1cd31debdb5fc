"""``coordinator simulate --engine ray``: the same apps on Flower's Simulation Engine (Ray).

The ServerApp logic (:func:`coordinator.server_app.run_federated`) and the sites' ClientApp
(the Flower app's ``clientapp`` component, ``site_node.app:app``, egress mod included) run
unchanged; Flower's Ray backend stands in
for the SuperLink and the SuperNodes: ``N`` virtual SuperNodes whose messages are executed by a
pool of Ray actors (``client-cpus`` CPUs each; as many actors as the Ray cluster has room for).

Each virtual node gets only ``partition-id`` from Flower. :func:`client_app` wraps the sites'
ClientApp with one mod that replaces the node config by the node config of site
``partition-id`` (:func:`site_configs`: its own private data folder, teacher folder, state
folder with the signed egress log, audit key and codec), so every virtual site keeps its own
data, teacher, egress policy and signed log. The coordinator verifies every receipt against the
sites' audit public keys (``WORKDIR/coordinator/site_keys/<site>.pub``; each key pair is
made in the site's state folder, as ``site-node keys init`` would).

Not simulated: TLS and SuperNode authentication (there is no network between the virtual
sites and the coordinator; use ``--engine processes`` or compose for those).

The run is one process (``python -m coordinator.topology.ray_engine SPEC``, its log
``WORKDIR/logs/coordinator.log``), driven by :func:`run_ray`; the spec JSON holds the site
configs, the run config and Flower's ``backend_config`` (``init_args.address`` = an existing
Ray cluster: README, "Many virtual sites").
"""

from __future__ import annotations

import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

    from coordinator.topology.env import SiteNode

log = logging.getLogger(__name__)


def site_configs(sites: list[SiteNode], workdir: Path) -> list[dict[str, Any]]:
    """Node config of each virtual site (index = Flower's ``partition-id``; the keys of
    ``site-node run``'s ``--node-config``); makes the site's audit key pair in its state folder
    ``WORKDIR/sites/<site>`` and installs the public half as
    ``WORKDIR/coordinator/site_keys/<site>.pub``."""
    from common.audit.keys import generate_keypair

    keys = site_keys_dir(workdir)
    keys.mkdir(parents=True, exist_ok=True)
    out = []
    for s in sites:
        state = (workdir / "sites" / s.name).resolve()
        key = state / "keys" / "audit.key"
        if not key.exists():
            generate_keypair(key.parent, "audit")
        (keys / f"{s.name}.pub").write_bytes((key.parent / "audit.pub").read_bytes())
        out.append({"data-path": str(s.data.resolve()), "teacher-dir": str(s.teacher_dir.resolve()),
                    "site-name": s.name, "state-dir": str(state), "audit-key": str(key),
                    "compression": s.compression})
    return out


def site_keys_dir(workdir: Path) -> Path:
    """Where the coordinator reads the virtual sites' audit public keys."""
    return workdir / "coordinator" / "site_keys"


class SiteConfigMod:
    """Flower mod: the node config of virtual node ``partition-id`` becomes its site's.

    ``capture`` (a test's recording tap, like the recording proxy of the processes engine):
    the serialised records of every message into site ``S`` are appended to
    ``CAPTURE/S.in`` and of every reply (after the egress mod) to ``CAPTURE/S.out``."""

    def __init__(self, configs: list[dict[str, Any]], capture: str | None = None) -> None:
        self.configs, self.capture = configs, capture

    def __call__(self, msg: Message, context: Context, call_next: Any) -> Message:
        flower = context.node_config  # Flower's (partition-id, num-partitions): it reads
        site = self.configs[int(flower["partition-id"])]
        context.node_config = dict(site)  # type: ignore[assignment]
        try:  # them again from the node's persisted context, so they are put back after
            self._tap(site["site-name"], "in", msg)
            reply: Message = call_next(msg, context)
            self._tap(site["site-name"], "out", reply)
            return reply
        finally:
            context.node_config = flower

    def _tap(self, site: str, way: str, msg: Message) -> None:
        if self.capture is None or not msg.has_content():
            return
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

        blobs = [o.deflate() for o in get_all_nested_objects(msg.content).values()]
        with (Path(self.capture) / f"{site}.{way}").open("ab") as fh:
            fh.write(b"|".join(blobs) + b"|")


def site_client_app() -> Any:
    """The sites' own ClientApp: the Flower app's ``clientapp`` component
    (``site_node.app:app``: egress mod and handlers), loaded by name as a SuperNode loads it
    (the coordinator package never imports the site package)."""
    import importlib
    import tomllib

    from coordinator.topology.env import APP_DIR

    doc = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    module, _, attr = str(doc["tool"]["flwr"]["app"]["components"]["clientapp"]).partition(":")
    return getattr(importlib.import_module(module), attr)


def _site_app(msg: Message, context: Context) -> Message:
    """Hand the message to the sites' own ClientApp (:func:`site_client_app`)."""
    return site_client_app()(msg, context)  # type: ignore[no-any-return]


def client_app(configs: list[dict[str, Any]], capture: str | None = None) -> ClientApp:
    """The sites' ClientApp behind :class:`SiteConfigMod`, for every message type it handles
    (this object is pickled to the Ray actors)."""
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=[SiteConfigMod(configs, capture)])
    for full_name in site_client_app()._registered_funcs:  # e.g. "query.teacher_outputs"
        category, action = full_name.split(".")
        getattr(app, category)(action)(_site_app)
    return app


def server_app(run_config: dict[str, Any]) -> ServerApp:
    """A ServerApp running :func:`coordinator.server_app.run_federated` with ``run_config``
    (the simulation passes no run config of its own)."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from common.logs import ensure_logging
        from coordinator.server_app import FedSettings, run_federated

        ensure_logging()
        run_federated(grid, FedSettings.from_run_config(run_config), str(context.run_id))

    return app


def backend_config(client_cpus: float, address: str | None) -> dict[str, Any]:
    """Flower's ``backend_config``: CPUs per actor, no GPU, and the Ray cluster to join
    (``None``: ``address="local"``, a new local one sized to this machine, never a cluster
    that ``ray start`` left registered in ``/tmp/ray``)."""
    init = {"address": address or "local"}
    return {"client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0}, "init_args": init}


def write_spec(workdir: Path, configs: list[dict[str, Any]], run_config: dict[str, Any],
               backend: dict[str, Any], capture: Path | None = None) -> Path:
    """The JSON the engine process reads (:func:`main`)."""
    path = workdir / "ray_spec.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if capture is not None:
        capture.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sites": configs, "run_config": run_config,
                                "backend_config": backend,
                                "capture": str(capture.resolve()) if capture else None},
                               indent=1))
    return path


#: Worker threads the patched runtime may start (one per Ray actor; Flower submits exactly one).
MAX_SIM_WORKERS = 512


class WideThreadPool(ThreadPoolExecutor):
    """``ThreadPoolExecutor`` sized :data:`MAX_SIM_WORKERS` whatever the caller asks."""

    def __init__(self, max_workers: int | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(MAX_SIM_WORKERS, *args, **kwargs)


def lift_worker_cap() -> None:
    """Let every Ray actor work at once. Flower 1.42's simulation runtime
    (``flwr.server.superlink.fleet.vce.vce_api``) serves messages from ``ThreadPoolExecutor()``,
    whose default size is ``min(32, cpu_count + 4)`` (6 on 2 cores), whatever the actor pool
    size: with ``client-cpus 0.1`` the pool holds 20 actors but only 6 messages ran at a time.
    The runtime submits one worker per actor, so a larger cap starts exactly one per actor."""
    from flwr.server.superlink.fleet.vce import vce_api

    if vce_api.ThreadPoolExecutor not in (ThreadPoolExecutor, WideThreadPool):
        raise RuntimeError("flwr's vce_api no longer uses ThreadPoolExecutor; "
                           "review coordinator.topology.ray_engine.lift_worker_cap")
    vce_api.ThreadPoolExecutor = WideThreadPool  # type: ignore[misc]


def run_spec(spec: Path) -> None:
    """Run the simulation the spec describes (in this process)."""
    from flwr.simulation import run_simulation

    lift_worker_cap()
    s = json.loads(spec.read_text())
    run_simulation(server_app(s["run_config"]), client_app(s["sites"], s.get("capture")),
                   num_supernodes=len(s["sites"]), backend_config=s["backend_config"])


def main(argv: list[str] | None = None) -> int:
    """``python -m coordinator.topology.ray_engine SPEC``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m coordinator.topology.ray_engine SPEC.json", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_spec(Path(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
