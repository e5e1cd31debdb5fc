"""Pure environment builder of the deployment: what each role is started with, no processes.

Every role is configured only through the environment variables docker-compose.yml sets
(:func:`role_envs`), for local processes 127.0.0.1 and given ports instead of service names, so
``coordinator simulate`` and the containers cannot drift. Also the base environment of every
process (:func:`base_env`, :func:`flwr_env`), the Flower app folder (:data:`APP_DIR`) and the
run-config TOML files (:func:`run_config_file`, written with ``tomli-w``). This module is what
the deployment path (:mod:`coordinator.federated_cli`) imports; it starts nothing.
"""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.security import CertsLayout

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "deploy" / "flwr_app"
ENTRYPOINTS = ROOT / "deploy" / "entrypoints"
HOST = "127.0.0.1"
IN_MEMORY_DB = ":flwr-in-memory:"  # Flower's in-memory SuperLink state (no sqlite file)
#: seconds between a simulated SuperNode's polls when idle (Flower's own: 3 s; one machine, so
#: the ~2 % of a core per site that 0.2 s costs buys the federation's latency back)
POLL_INTERVAL = 0.2


@dataclass
class SiteNode:
    """One simulated hospital: its name, private data folder and teacher run folder."""

    name: str
    data: Path
    teacher_dir: Path
    compression: str = "fp16"  # how its query logits are encoded (node config ``compression``)


@dataclass(frozen=True)
class Topology:
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
    weight_release: bool = False  # sites allow FedAvg (weights leave): baseline runs only

    @property
    def certs(self) -> CertsLayout:
        """Where init-certs writes (CA, SuperLink certificate, SuperExec secret only)."""
        return CertsLayout(self.workdir / "certs")

    def site_keys(self, site: str) -> Path:
        """The site's own keys folder (``site-node keys init``: node.key, audit.key, .pub)."""
        return self.workdir / "sites" / site / "keys"

    @property
    def coordinator_pub(self) -> Path:
        """The coordinator's audit public key as handed to the sites (``COORDINATOR_PUB_DIR``/
        audit.pub, copied there by the coordinator before it turns healthy), pinned by each."""
        return self.workdir / "coordinator-pub" / "audit.pub"

    @property
    def pubkeys(self) -> Path:
        """Where each site's ``site-keys`` role drops ``<site>/node.pub`` and ``audit.pub``."""
        return self.workdir / "pubkeys"

    @property
    def registry(self) -> Path:
        """The coordinator's registered site keys (``node-auth/<site>.pub``,
        ``audit/<site>.pub``)."""
        return self.workdir / "registry"


@dataclass(frozen=True)
class Role:
    """One process to start: its log/marker name, its entrypoint role and its environment."""

    name: str
    role: str
    env: dict[str, str]


#: Roles run to completion before the next one starts (the others are long-running).
ONE_SHOT = ("init-certs", "site-keys")


def role_envs(plan: Topology) -> list[Role]:
    """init-certs, one site-keys per :class:`SiteNode` (each site makes its own key pairs and
    drops only the public halves), superlink, coordinator (registers those public keys) and one
    site per :class:`SiteNode`, in start order, each with the variables docker-compose.yml sets
    for that service (no other configuration)."""
    roles = [Role("init-certs", "init-certs", init_env(plan))]
    roles += [Role(f"keys-{s.name}", "site-keys", site_keys_env(plan, s)) for s in plan.sites]
    roles += [Role("superlink", "superlink", superlink_env(plan)),
             Role("coordinator", "coordinator", coordinator_env(plan))]
    roles += [Role(f"site-{s.name}", "site", site_env(plan, s, port))
              for s, port in zip(plan.sites, plan.node_ports, strict=True)]
    for r in roles:
        r.env["RUNTIME_DIR"] = str(plan.workdir / "run" / r.name)
    return roles


def init_env(plan: Topology) -> dict[str, str]:
    """Environment of ``init-certs`` (no RESULTS_DIR: nothing to hand over)."""
    return {"CERTS_DIR": str(plan.certs.root), "SITES": ",".join(s.name for s in plan.sites),
            "SUPERLINK_HOSTS": f"localhost,{HOST}", "RESULTS_DIR": "",
            "PUBKEYS_DIR": str(plan.pubkeys), "FEDMTKD_UID": str(plan.uid),
            "COORDINATOR_PUB_DIR": str(plan.coordinator_pub.parent)}


def site_keys_env(plan: Topology, site: SiteNode) -> dict[str, str]:
    """Environment of one ``site-keys`` (``site-node keys init`` in the site's own folder)."""
    return {"SITE_NAME": site.name, "SITE_KEYS": str(plan.site_keys(site.name)),
            "PUBKEYS_OUT": str(plan.pubkeys / site.name)}


def superlink_env(plan: Topology) -> dict[str, str]:
    """Environment of ``superlink`` (in-memory state, listening on 127.0.0.1 only)."""
    c = plan.certs
    return {"TLS": "on" if plan.tls else "off", "SUPERLINK_BIND_HOST": HOST,
            "SUPERLINK_PORT": str(plan.superlink_port), "CA_CERT": str(c.ca),
            "SERVER_CERT": str(c.server_cert), "SERVER_KEY": str(c.server_key),
            "SUPEREXEC_SECRET": str(c.superexec_secret), "SUPERLINK_DB": IN_MEMORY_DB}


def coordinator_env(plan: Topology) -> dict[str, str]:
    """Environment of ``coordinator`` (results stay in the experiment's out folder)."""
    c = plan.certs
    return {"TLS": "on" if plan.tls else "off", "SUPERLINK_HOST": HOST,
            "SUPERLINK_PORT": str(plan.superlink_port), "CA_CERT": str(c.ca),
            "SUPEREXEC_SECRET": str(c.superexec_secret),
            "SITES": ",".join(s.name for s in plan.sites), "SITE_PUBKEYS": str(plan.pubkeys),
            "NODE_AUTH_KEYS_DIR": str(plan.registry / "node-auth"),
            "AUDIT_KEYS_DIR": str(plan.registry / "audit"), "APP_DIR": str(APP_DIR),
            "EXPERIMENT_CONFIG": str(plan.config), "EXPERIMENT_OUT": str(plan.out),
            "PROXY_DIR": str(plan.proxy), "PROXY_CASES": "9", "RESULTS_DIR": str(plan.out),
            "COORDINATOR_WORKDIR": str(plan.workdir / "coordinator"),
            "ROUND_TIMEOUT": str(plan.round_timeout), "RUN_TIMEOUT": str(plan.run_timeout),
            "WAIT_TIMEOUT": "60", "RUN_CONFIG": str(plan.run_config or ""),
            "COORDINATOR_THREADS": coordinator_threads(),
            "COORDINATOR_PUB_DIR": str(plan.coordinator_pub.parent)}


def coordinator_threads() -> str:
    """Threads of the ServerApp, which trains the students while the sites wait: the caller's
    ``OMP_NUM_THREADS`` when set (one thread everywhere reproduces ``--local`` at one thread to
    the last bit), else every core."""
    return os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count() or 1)


def site_env(plan: Topology, site: SiteNode, port: int) -> dict[str, str]:
    """Environment of one ``site`` (its data and teacher as given; no phantom, no training at
    start: the coordinator's ``train`` message trains a missing teacher; weight release only
    when ``plan.weight_release``)."""
    c = plan.certs
    return {"TLS": "on" if plan.tls else "off", "SITE_NAME": site.name,
            "SITE_DATA": str(site.data), "SITE_RUN": str(site.teacher_dir),
            "SITE_STATE": str(plan.workdir / "sites" / site.name), "SITE_PHANTOM": "never",
            "SITE_TRAIN_ON_START": "never", "SITE_COMPRESSION": site.compression,
            "SITE_WEIGHT_RELEASE": "on" if plan.weight_release else "off",
            "SITE_AUDIT_KEY": str(plan.site_keys(site.name) / "audit.key"),
            "SUPERLINK_ADDRESS": f"{HOST}:{plan.dial_port}", "SUPERNODE_BIND_HOST": HOST,
            "SUPERNODE_PORT": str(port), "CA_CERT": str(c.public_ca),
            "SITE_KEY": str(plan.site_keys(site.name) / "node.key"),
            "SITE_POLL_INTERVAL": str(POLL_INTERVAL),
            "SITE_COORDINATOR_KEY": str(plan.coordinator_pub)}


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


def app_defaults(app: Path | None = None) -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of the Flower app folder ``app`` (default :data:`APP_DIR`):
    the one place the run-config keys and their defaults are written."""
    pyproject = (app or APP_DIR) / "pyproject.toml"
    config: dict[str, Any] = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    return config


def write_toml(path: Path, values: dict[str, object]) -> Path:
    """Write ``values`` (a TOML-serialisable mapping) to ``path`` with ``tomli-w``."""
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(values))
    return path


def run_config_file(workdir: Path, values: dict[str, object],
                    name: str = "run_config.toml") -> Path:
    """A TOML file of run-config values (``flwr run --run-config FILE``, ``RUN_CONFIG``)."""
    return write_toml(workdir / name, values)
