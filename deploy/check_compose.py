#!/usr/bin/env python3
"""Engine-less check of docker-compose.yml (for CI, where no Docker engine exists).

Validates: required services; each site has its own /local volume; a site's services (roles
``site``, ``site-keys``) mount nothing of the ``certs`` volume but ``public``; build contexts,
Dockerfiles and entrypoint scripts exist; every variable an entrypoint script needs (every
``${VAR:?}`` it requires, and any other variable it reads without a ``${VAR:-default}``, not
assigned in it) is set in the service environment, and the service sets no variable that
neither its script nor ``entrypoint.sh``/``healthcheck.sh`` reads; published host ports are
unique; depends_on targets exist; healthchecks present; named volumes declared; the
Dockerfile switches to a non-root ``USER``. Layout and key custody (:func:`check_layout`):
a site's run, state and key folders are never its data folder nor inside it (the site never
writes there); every role's image installs the pip extras the role needs (:data:`ROLE_EXTRAS`:
the coordinator's ServerApp exports ONNX); no private key lies in a host bind mount or in a
volume a service of another party mounts; the coordinator's run folder (holding its private
audit key) is not the exported ``RESULTS_DIR`` and is handed over only through
``deploy/export_results.py`` (which leaves private keys behind). ``coordinator simulate``
builds the same environments (tests/deploy/test_entrypoint_env.py checks them with
:func:`required_vars`). Also runs ``docker compose config -q`` when the compose plugin is
installed (skipped otherwise).
Prints one line per problem; exit status 1 if any.
Usage: ``python deploy/check_compose.py [--file docker-compose.yml] [--root REPO]``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

REQUIRED = ("init", "superlink", "site-a", "site-b", "site-c", "site-a-keys", "site-b-keys",
            "site-c-keys", "coordinator")
SITE_ROLES = ("site", "site-keys")  # run on a site: may see only the public part of `certs`
SITES = ("site-a", "site-b", "site-c")
SCRIPTS_IN_IMAGE = "/opt/fedmtkd/deploy/entrypoints/"
SCRIPTS_IN_REPO = Path("deploy/entrypoints")
BUILTIN = {"HOME", "PATH", "PWD", "IFS", "USER", "HOSTNAME", "RANDOM", "BASH_SOURCE"}
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
_DEFAULT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?[-=]")
_ASSIGN = re.compile(r"(?:^|[\s;(])(?:local\s+(?:-\w+\s+)*|for\s+)?([A-Za-z_]\w*)(?:=|\s+in\b)")
_READ = re.compile(r"\bread\s+(?:-\S+\s+)*([A-Za-z_]\w*)")
_REQUIRED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?")
COMMON_SCRIPTS = ("entrypoint.sh", "healthcheck.sh")  # run in every service
ROLE_EXTRAS = {"coordinator": ("export",)}  # pip extras of fedmtkd a role's image must install
SITE_WRITES = ("SITE_RUN", "SITE_STATE")  # folders a site writes: never inside SITE_DATA
SITE_KEY_FILES = ("SITE_KEY", "SITE_AUDIT_KEY")  # the site's private keys (files)
KEY_VARS = ("SITE_KEY", "SITE_AUDIT_KEY", "SERVER_KEY", "SUPEREXEC_SECRET", "SITE_KEYS",
            "EXPERIMENT_OUT")  # private keys/secrets (EXPERIMENT_OUT: audit/coordinator.key)
EXPORTER = "export_results.py"  # coordinator.sh's only way to fill RESULTS_DIR


def _code(text: str) -> str:
    """Shell code of a script: no comment lines, no quoted heredocs (not shell)."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return re.sub(r"<<'PY'\n.*?\nPY\n", "", "\n".join(lines), flags=re.S)


def required_vars(text: str, unconditional: bool = False) -> set[str]:
    """Variables a script requires with ``${VAR:?}``; with ``unconditional`` only those of
    top-level lines (not indented: not inside a branch or function)."""
    lines = _code(text).splitlines()
    if unconditional:
        lines = [ln for ln in lines if ln[:1] not in (" ", "\t")]
    return set(_REQUIRED.findall("\n".join(lines)))


def referenced_vars(text: str) -> set[str]:
    """Every variable a script reads (with or without a default)."""
    return set(_VAR.findall(_code(text)))


def script_vars(text: str) -> tuple[set[str], set[str]]:
    """(variables a script needs from outside, variables with a documented default)."""
    body = _code(text)
    used = set(_VAR.findall(body))
    defaults = set(_DEFAULT.findall(body))
    local = set(_ASSIGN.findall(body)) | set(_READ.findall(body))
    return (used - defaults - local - BUILTIN) | required_vars(text), defaults


def _as_dict(env: Any) -> dict[str, str]:
    """Service ``environment`` as a dict (mapping or list of ``K=V``)."""
    if isinstance(env, dict):
        return {str(k): "" if v is None else str(v) for k, v in env.items()}
    if isinstance(env, list):
        return dict((str(e).split("=", 1) + [""])[:2] for e in env)  # type: ignore[misc]
    return {}


def _role(svc: dict[str, Any]) -> str | None:
    """First word of the service command (the entrypoint role)."""
    cmd = svc.get("command")
    if isinstance(cmd, str):
        cmd = cmd.split()
    return str(cmd[0]) if cmd else None


def check_env(name: str, svc: dict[str, Any], root: Path) -> list[str]:
    """Entrypoint script exists and every variable it needs is set in the service."""
    role = _role(svc)
    if role is None:
        return [f"{name}: no command (entrypoint role)"]
    script = root / SCRIPTS_IN_REPO / f"{role}.sh"
    if not script.is_file():
        return [f"{name}: entrypoint script {script.relative_to(root)} not found"]
    needed, _ = script_vars(script.read_text())
    env = _as_dict(svc.get("environment"))
    known = referenced_vars(script.read_text())
    for common in COMMON_SCRIPTS:
        path = root / SCRIPTS_IN_REPO / common
        known |= referenced_vars(path.read_text()) if path.is_file() else set()
    return ([f"{name}: {role}.sh uses ${var} but the service does not set it"
             for var in sorted(needed - set(env))]
            + [f"{name}: sets {var} but no entrypoint script of role {role} reads it"
               for var in sorted(set(env) - known)])


def _volume_sources(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every volume of a service (short or long syntax)."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            out.append((parts[0], parts[1] if len(parts) > 1 else parts[0]))
        elif isinstance(v, dict):
            out.append((str(v.get("source", "")), str(v.get("target", ""))))
    return out


def check_volumes(services: dict[str, Any], declared: dict[str, Any]) -> list[str]:
    """Named volumes declared; each site has its own volume at /local."""
    problems = []
    for name, svc in services.items():
        for src, _ in _volume_sources(svc):
            named = src and not src.startswith((".", "/", "~"))
            if named and src not in declared:
                problems.append(f"{name}: volume {src!r} is not declared under volumes:")
    owners: dict[str, str] = {}
    for site in SITES:
        local = [s for s, t in _volume_sources(services.get(site, {})) if t == "/local"]
        if not local:
            problems.append(f"{site}: no volume mounted at /local")
        for src in local:
            if src in owners:
                problems.append(f"{site}: /local volume {src!r} is shared with {owners[src]}")
            owners[src] = site
    return problems


def check_site_secrets(services: dict[str, Any]) -> list[str]:
    """A site's services mount no private part of the ``certs`` volume (only ``public``): its
    keys are its own (``site-node keys init``), and no other secret is its business."""
    problems = []
    for name, svc in services.items():
        if _role(svc) not in SITE_ROLES:
            continue
        for v in svc.get("volumes") or []:
            src = v.split(":")[0] if isinstance(v, str) else str(v.get("source", ""))
            sub = "" if isinstance(v, str) else str((v.get("volume") or {}).get("subpath", ""))
            if src == "certs" and sub != "public":
                problems.append(f"{name}: mounts certs{'/' + sub if sub else ''}; a site may "
                                "see only certs/public (its keys are made on the site)")
    return problems


def check_build(name: str, svc: dict[str, Any], root: Path) -> list[str]:
    """Build context and Dockerfile exist; the Dockerfile switches to a non-root USER."""
    build = svc.get("build")
    if build is None:
        return [] if svc.get("image") else [f"{name}: neither build nor image"]
    ctx = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    path = (root / ctx / dockerfile).resolve()
    if not (root / ctx).is_dir() or not path.is_file():
        return [f"{name}: build context {ctx!r} / dockerfile {dockerfile!r} not found"]
    users = re.findall(r"^\s*USER\s+(\S+)", path.read_text(), flags=re.M)
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        return [f"{name}: {dockerfile} does not end with a non-root USER"]
    return []


def check_health(name: str, svc: dict[str, Any], root: Path) -> list[str]:
    """A healthcheck whose script (if one of ours) exists."""
    test = (svc.get("healthcheck") or {}).get("test")
    if not test:
        return [f"{name}: no healthcheck"]
    words = test if isinstance(test, list) else str(test).split()
    return [f"{name}: healthcheck script {w} not in {SCRIPTS_IN_REPO}" for w in words
            if str(w).startswith(SCRIPTS_IN_IMAGE)
            and not (root / SCRIPTS_IN_REPO / str(w)[len(SCRIPTS_IN_IMAGE):]).is_file()]


def _host_ports(svc: dict[str, Any]) -> list[str]:
    """Published host ports of a service."""
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out.append(str(p.get("published", "")))
        else:
            parts = str(p).split(":")
            out.append(parts[-2] if len(parts) > 1 else parts[0])
    return [p for p in out if p]


def check_ports_and_deps(services: dict[str, Any]) -> list[str]:
    """Host ports unique; depends_on names existing services."""
    problems, seen = [], {}
    for name, svc in services.items():
        for port in _host_ports(svc):
            if port in seen:
                problems.append(f"{name}: host port {port} also published by {seen[port]}")
            seen[port] = name
        for dep in svc.get("depends_on") or []:
            if dep not in services:
                problems.append(f"{name}: depends_on unknown service {dep!r}")
    return problems


def _within(path: str, folder: str) -> bool:
    """Whether container path ``path`` is ``folder`` or inside it."""
    p, f = PurePosixPath(path), PurePosixPath(folder)
    return p == f or f in p.parents


def check_site_layout(name: str, svc: dict[str, Any]) -> list[str]:
    """A site's run/state/key folders are not inside its data folder (site-node refuses)."""
    env = _as_dict(svc.get("environment"))
    data = env.get("SITE_DATA")
    if _role(svc) != "site" or not data:
        return []
    folders = [(v, env[v]) for v in SITE_WRITES if env.get(v)]
    folders += [(v, str(PurePosixPath(env[v]).parent)) for v in SITE_KEY_FILES if env.get(v)]
    return [f"{name}: {var} {folder} is inside the data folder SITE_DATA {data}, which the "
            "site never writes to; use sibling folders (e.g. /local/data and /local/run)"
            for var, folder in folders if _within(folder, data)]


def _pip_extras(dockerfile: str) -> set[str] | None:
    """Extras of the ``pip install .[...]`` of fedmtkd in a Dockerfile (None: not installed)."""
    text = dockerfile.replace("\\\n", " ")
    found: set[str] | None = None
    for line in re.findall(r"pip install[^\n]*", text):
        for extras in re.findall(r"""(?:^|\s)["']?\.(?:\[([\w,\s-]*)\])?["']?(?=\s|&|;|$)""",
                                 line):
            found = (found or set()) | {e.strip() for e in extras.split(",") if e.strip()}
    return found


def check_extras(name: str, svc: dict[str, Any], root: Path) -> list[str]:
    """The image of a role installs fedmtkd with the extras that role needs."""
    need = ROLE_EXTRAS.get(_role(svc) or "", ())
    build = svc.get("build")
    if not need or build is None:
        return []
    ctx = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    path = root / ctx / dockerfile
    extras = _pip_extras(path.read_text()) if path.is_file() else set()
    if extras is None:
        return [f"{name}: {dockerfile} never runs `pip install .` (fedmtkd)"]
    return [f"{name}: {dockerfile} installs fedmtkd without the [{e}] extra the {_role(svc)} "
            f"role needs (pip install '.[{','.join(need)}]')" for e in need if e not in extras]


def _mounts(svc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, subpath) of every volume of a service."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            out.append((parts[0], parts[1] if len(parts) > 1 else parts[0], ""))
        elif isinstance(v, dict):
            sub = str((v.get("volume") or {}).get("subpath", ""))
            out.append((str(v.get("source", "")), str(v.get("target", "")), sub))
    return out


def _party(svc: dict[str, Any]) -> str:
    """Who runs a service: its site (site and site-keys roles) or the operator."""
    return _as_dict(svc.get("environment")).get("SITE_NAME", "") or "operator"


def _key_exposures(name: str, var: str, path: str, services: dict[str, Any]) -> list[str]:
    """Where the private key/secret ``path`` of service ``name`` is visible to others."""
    svc, problems = services[name], []
    for src, target, sub in _mounts(svc):
        if not _within(path, target):
            continue
        if src.startswith((".", "/", "~")):
            problems.append(f"{name}: {var} {path} is in the host folder {src} (exported)")
            continue
        rel = str(PurePosixPath(sub) / PurePosixPath(path).relative_to(target))
        for other, osvc in services.items():
            if other == name or _party(osvc) == _party(svc):
                continue
            if any(osrc == src and _within(rel, osub or ".") or osrc == src and not osub
                   for osrc, _, osub in _mounts(osvc)):
                problems.append(f"{name}: {var} {path} is in volume {src!r}, which {other} "
                                "(another party) mounts")
    return problems


def check_key_custody(services: dict[str, Any], root: Path) -> list[str]:
    """No private key in a host folder or a volume of another party; the coordinator's run
    folder is not the exported RESULTS_DIR and is exported without its private key."""
    problems = []
    for name, svc in services.items():
        env = _as_dict(svc.get("environment"))
        for var in KEY_VARS:
            if env.get(var):
                problems += _key_exposures(name, var, env[var], services)
        out, results = env.get("EXPERIMENT_OUT"), env.get("RESULTS_DIR")
        if _role(svc) != "coordinator" or not out or not results:
            continue
        if _within(out, results) or _within(results, out):
            problems.append(f"{name}: EXPERIMENT_OUT {out} and the exported RESULTS_DIR "
                            f"{results} overlap: the private audit key would be exported")
        script = root / SCRIPTS_IN_REPO / "coordinator.sh"
        if script.is_file() and EXPORTER not in _code(script.read_text()):
            problems.append(f"{name}: coordinator.sh fills RESULTS_DIR without {EXPORTER}, "
                            "which leaves private keys behind")
    return problems


def check_layout(services: dict[str, Any], root: Path) -> list[str]:
    """Site folder layout, pip extras of each role's image, key custody."""
    problems = []
    for name, svc in services.items():
        problems += check_site_layout(name, svc) + check_extras(name, svc, root)
    return problems + check_key_custody(services, root)


def check_compose(path: Path, root: Path) -> list[str]:
    """All problems of the compose file ``path`` (paths relative to ``root``)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return [f"{path}: cannot read: {exc}"]
    services: dict[str, Any] = (doc or {}).get("services") or {}
    problems = [f"missing service {s!r}" for s in REQUIRED if s not in services]
    for name, svc in services.items():
        problems += check_build(name, svc, root) + check_env(name, svc, root)
        problems += check_health(name, svc, root)
    problems += check_volumes(services, (doc or {}).get("volumes") or {})
    problems += check_site_secrets(services) + check_layout(services, root)
    return problems + check_ports_and_deps(services)


def docker_compose_config(path: Path) -> list[str]:
    """``docker compose config -q`` if the compose plugin exists; [] when it cannot run."""
    if shutil.which("docker") is None:
        return []
    try:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20)
        if probe.returncode != 0:
            return []
        res = subprocess.run(["docker", "compose", "-f", str(path), "config", "-q"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if res.returncode == 0:
        return []
    return [f"docker compose config: {ln}" for ln in res.stderr.strip().splitlines()[:5]]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(prog="check_compose", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    root_default = Path(__file__).resolve().parents[1]
    p.add_argument("--root", type=Path, default=root_default, help="repository root")
    p.add_argument("--file", type=Path, help="compose file (default ROOT/docker-compose.yml)")
    p.add_argument("--no-docker", action="store_true", help="skip `docker compose config`")
    args = p.parse_args(argv)
    path = args.file or args.root / "docker-compose.yml"
    problems = check_compose(path, args.root)
    if not args.no_docker:
        problems += docker_compose_config(path)
    for line in problems:
        print(line)
    print(f"check_compose: {len(problems)} problem(s) in {path}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
