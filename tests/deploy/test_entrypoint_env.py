"""``coordinator simulate`` and docker-compose.yml configure the same entrypoints the same way.

Every ``${VAR:?}`` an entrypoint script requires unconditionally must be in the environment
``coordinator.topology.env.role_envs`` builds for that role, every variable it sets must be read
by a script, and it sets the same variables as the compose service (apart from the phantom and
teacher-training ones a simulated site does not use). The scripts are shellcheck-clean (when
shellcheck is installed) and fail early and clearly on a bad environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from coordinator.topology.env import ENTRYPOINTS, SiteNode, Topology, role_envs
from tests.deploy._load import ROOT, load_script

cc = load_script("check_compose")
SCRIPTS = ("entrypoint", "healthcheck", "init-certs", "site-keys", "superlink", "site",
           "coordinator")
# only used when a site makes phantom data or trains its teacher at start (never in simulate)
SITE_ONLY_IN_COMPOSE = {"SITE_STYLE", "SITE_SEED", "SITE_CASES", "SITE_MODEL",
                        "SITE_TEACHER_CONFIG"}


def _plan(tmp: Path, tls: bool = True) -> Topology:
    sites = tuple(SiteNode(n, tmp / "data" / n, tmp / "run" / n) for n in ("s1", "s2"))
    return Topology(tmp / "w", sites, tmp / "exp.toml", tmp / "out", tmp / "proxy", tls, 8000,
                8001, (9001, 9002), run_config=tmp / "rc.toml")


def _script(role: str) -> str:
    return (ENTRYPOINTS / f"{role}.sh").read_text()


def _compose_services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def test_simulate_sets_every_variable_each_entrypoint_requires(tmp_path: Path) -> None:
    roles = role_envs(_plan(tmp_path))
    assert [r.role for r in roles] == ["init-certs", "site-keys", "site-keys", "superlink",
                                       "coordinator", "site", "site"]
    common = cc.referenced_vars(_script("entrypoint")) | cc.referenced_vars(_script("healthcheck"))
    for r in roles:
        required = cc.required_vars(_script(r.role), unconditional=True)
        assert required, r.role
        assert not required - set(r.env), f"{r.name}: simulate does not set {required - set(r.env)}"
        stray = set(r.env) - cc.referenced_vars(_script(r.role)) - common
        assert not stray, f"{r.name}: simulate sets {stray}, read by no entrypoint script"
    assert len({r.env["RUNTIME_DIR"] for r in roles}) == len(roles)  # markers never collide


def test_simulate_and_compose_set_the_same_variables(tmp_path: Path) -> None:
    services = _compose_services()
    by_role = {r.role: r for r in role_envs(_plan(tmp_path))}
    for service, role in (("init", "init-certs"), ("superlink", "superlink"),
                          ("coordinator", "coordinator"), ("site-b", "site"),
                          ("site-b-keys", "site-keys")):
        compose = set(cc._as_dict(services[service]["environment"]))
        ours = set(by_role[role].env)
        allowed = SITE_ONLY_IN_COMPOSE if role == "site" else set()
        assert compose - allowed == ours, (service, compose ^ ours)


def _named(plan: Topology) -> dict[str, dict[str, str]]:
    return {r.name: r.env for r in role_envs(plan)}


def test_tls_and_ports_reach_the_roles(tmp_path: Path) -> None:
    on, off = role_envs(_plan(tmp_path)), role_envs(_plan(tmp_path, tls=False))
    assert {r.env.get("TLS") for r in on if "TLS" in r.env} == {"on"}
    assert {r.env.get("TLS") for r in off if "TLS" in r.env} == {"off"}
    assert {r.role for r in on if "TLS" not in r.env} == {"init-certs", "site-keys"}
    env = _named(_plan(tmp_path))
    site = env["site-s1"]
    assert site["SUPERLINK_ADDRESS"] == "127.0.0.1:8001"  # the dial port, not the SuperLink's
    assert site["SUPERNODE_PORT"] == "9001" and env["site-s2"]["SUPERNODE_PORT"] == "9002"
    coord = env["coordinator"]
    assert coord["RUN_CONFIG"] == str(tmp_path / "rc.toml")


def test_keys_are_made_on_the_site_and_only_public_halves_travel(tmp_path: Path) -> None:
    """The site reads its private keys from its own keys folder; that folder is the one its
    site-keys role writes; the coordinator only sees the drop box of public keys and its
    registry; init-certs knows nothing of site keys."""
    env = _named(_plan(tmp_path))
    keys = tmp_path / "w" / "sites" / "s1" / "keys"
    assert env["keys-s1"]["SITE_KEYS"] == str(keys)
    assert env["site-s1"]["SITE_KEY"] == str(keys / "node.key")
    assert env["site-s1"]["SITE_AUDIT_KEY"] == str(keys / "audit.key")
    coord = env["coordinator"]
    assert env["keys-s1"]["PUBKEYS_OUT"] == str(Path(coord["SITE_PUBKEYS"]) / "s1")
    assert coord["AUDIT_KEYS_DIR"] == str(tmp_path / "w" / "registry" / "audit")
    assert coord["NODE_AUTH_KEYS_DIR"] == str(tmp_path / "w" / "registry" / "node-auth")
    for name in ("coordinator", "superlink", "init-certs"):
        assert not any(str(keys) in v for v in env[name].values()), name


def test_scripts_are_strict_and_documented() -> None:
    for role in SCRIPTS:
        text = _script(role)
        assert "set -euo pipefail" in text, role
        for var in cc.required_vars(text):  # each required variable is listed in the header
            header = text.split("set -euo pipefail")[0]
            assert var in header, f"{role}.sh: ${var} not documented in its header"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean() -> None:
    out = subprocess.run(["shellcheck", *sorted(str(p) for p in ENTRYPOINTS.glob("*.sh"))],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(argv, env={**base, **env}, capture_output=True, text=True,
                          timeout=120, check=False)


def test_entrypoint_fails_clearly_and_records_its_role(tmp_path: Path) -> None:
    entry = str(ENTRYPOINTS / "entrypoint.sh")
    out = _run([entry, "nope"], {"RUNTIME_DIR": str(tmp_path)})
    assert out.returncode == 2 and "unknown role 'nope'" in out.stderr
    out = _run([entry, "superlink"], {"RUNTIME_DIR": str(tmp_path)})
    assert out.returncode != 0 and "TLS" in out.stderr  # the first required variable
    assert (tmp_path / "fedmtkd-role").read_text().strip() == "superlink"
    health = str(ENTRYPOINTS / "healthcheck.sh")
    assert _run([health, "coordinator"], {"RUNTIME_DIR": str(tmp_path)}).returncode == 1
    (tmp_path / "fedmtkd-coordinator.alive").touch()
    assert _run([health, "coordinator"], {"RUNTIME_DIR": str(tmp_path)}).returncode == 0


def test_site_entrypoint_runs_site_node_with_the_audit_key(tiny_sites: dict,
                                                          tmp_path: Path) -> None:
    """``entrypoint.sh site-keys`` then ``entrypoint.sh site --dry-run``: the site's own keys
    are made, only the .pub files land in the drop box, and the exact flower-supernode command
    uses the site's own node key and audit key."""
    import shlex
    import stat
    import sys

    mc = load_script("make_certs")
    mc.make_all(tmp_path / "w" / "certs", ["localhost"], force=False)
    plan = _plan(tmp_path)
    plan = replace(plan, sites=(SiteNode("s1", tiny_sites["site_a"], tmp_path / "t",
                                         "int8_probs"), plan.sites[1]))
    env = _named(plan)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    out = _run([str(ENTRYPOINTS / "entrypoint.sh"), "site-keys"],
               {**env["keys-s1"], "PATH": path})
    assert out.returncode == 0, out.stdout + out.stderr
    keys, drop = tmp_path / "w" / "sites" / "s1" / "keys", tmp_path / "w" / "pubkeys" / "s1"
    assert sorted(p.name for p in drop.iterdir()) == ["audit.pub", "node.pub"]
    assert stat.S_IMODE((keys / "node.key").stat().st_mode) == 0o600
    from common.records import load_or_create_key

    load_or_create_key(plan.out / "audit" / "coordinator.key")  # the coordinator makes it
    plan.coordinator_pub.parent.mkdir(parents=True)  # and hands its public half over
    shutil.copy(plan.out / "audit" / "coordinator.pub", plan.coordinator_pub)
    out = _run([str(ENTRYPOINTS / "entrypoint.sh"), "site", "--dry-run"],
               {**env["site-s1"], "PATH": path})
    assert out.returncode == 0, out.stdout + out.stderr
    cmd = shlex.split(next(ln for ln in out.stdout.splitlines() if "flower-supernode" in ln))
    certs = tmp_path / "w" / "certs"
    assert cmd[cmd.index("--root-certificates") + 1] == str(certs / "public" / "ca.crt")
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(keys / "node.key")
    assert cmd[cmd.index("--superlink") + 1] == "127.0.0.1:8001"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "9001"
    conf = cmd[cmd.index("--node-config") + 1]
    assert f'audit-key="{keys / "audit.key"}"' in conf
    assert 'compression="int8_probs"' in conf and 'site-name="s1"' in conf
    assert f'state-dir="{tmp_path / "w" / "sites" / "s1"}"' in conf
    assert f'coordinator-key="{plan.coordinator_pub}"' in conf  # the coordinator key, pinned
    assert cmd[cmd.index("--poll-interval") + 1] == "0.2"
