"""``site-node --data DIR --coordinator HOST:PORT --name SITE``: start this hospital's SuperNode.

Checks first, then hands over to ``flower-supernode``: the data folder is discovered and every
case's NIfTI header read (a problem is one line naming the file, exit 2); the teacher folder is
checked (no ``best.pt`` is only a warning: the coordinator's ``train`` message trains it); the
TLS CA (``--certs``), the optional SuperNode auth key and the optional audit key must exist.
Each start is appended to ``<state-dir>/runs.jsonl`` (read by ``site-node status``); the audit
log of the egress gate lands in ``<state-dir>/audit/egress.jsonl``, signed with ``--audit-key``
(default ``<state-dir>/audit/site.key``, generated on first use). The container entrypoint
``deploy/entrypoints/site.sh`` (and so ``coordinator simulate``) starts sites with this command.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common.config import ConfigError, first_error
from common.data.errors import DataError, data_error
from common.io import strict_json_dumps

DEFAULT_STATE_DIR = Path("~/.fedmtkd/site-node")
COMPRESSION = ("fp16", "int8_probs", "downsample", "fp32")
EVENTS = "runs.jsonl"
log = logging.getLogger(__name__)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``site-node run`` (also accepted without the word ``run``)."""
    p.add_argument("--data", type=Path, required=True, help="this site's private dataset folder")
    p.add_argument("--coordinator", required=True, help="SuperLink address HOST:PORT")
    p.add_argument("--name", required=True, help="site name reported to the coordinator")
    p.add_argument("--teacher-dir", dest="teacher_dir", type=Path,
                   help="teacher run folder (default: STATE_DIR/teacher)")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--certs", type=Path, default=Path("certs"),
                     help="the federation's CA certificate, or a folder with its ca.crt "
                          "(TLS)")
    tls.add_argument("--insecure", action="store_true", help="no TLS (testing only)")
    p.add_argument("--key", type=Path,
                   help="SuperNode auth private key (ECDSA P-384, OpenSSH; made on this site "
                        "by `site-node keys init`: KEYS/node.key)")
    p.add_argument("--audit-key", dest="audit_key", type=Path,
                   help="Ed25519 key signing the egress log (`site-node keys init`: "
                        "KEYS/audit.key; default: STATE_DIR/audit/site.key, generated on "
                        "first use)")
    p.add_argument("--compression", choices=COMPRESSION,
                   help="how query logits are encoded (node config `compression`; default fp16)")
    p.add_argument("--policy", type=Path, help="egress policy TOML (default: built-in)")
    p.add_argument("--coordinator-key", dest="coordinator_key", type=Path,
                   help="the coordinator's audit public key (PEM) to pin: requests signed by "
                        "any other key, or without a signed head, are refused (node config "
                        "`coordinator-key`; installed by `site-node keys pin`: "
                        "KEYS/coordinator.pub)")
    p.add_argument("--allow-weight-release", action="store_true",
                   help="FedAvg baseline runs only: the policy with weight_release.allow = true "
                        "(written to STATE_DIR/policy_weight_release.yaml): weights leave")
    p.add_argument("--host", default="127.0.0.1",
                   help="address of the local ClientApp runtime API (default %(default)s)")
    p.add_argument("--port", type=int, default=9094, help="local ClientApp runtime port")
    p.add_argument("--state-dir", dest="state_dir", type=Path, default=DEFAULT_STATE_DIR,
                   help="run history and egress audit log (default %(default)s)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="check everything, print the flower-supernode command, start nothing")
    p.add_argument("--poll-interval", dest="poll_interval", type=float,
                   help="seconds between the SuperNode's polls of the coordinator when idle "
                        "(default: Flower's 3 s; e.g. 0.2 on a LAN)")
    p.add_argument("--no-warm", dest="no_warm", action="store_true",
                   help="start each ClientApp cold instead of forking it from a warm server")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``; anything else is a one-line DataError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DataError(f"--coordinator {text!r}: expected HOST:PORT, e.g. 10.0.0.5:8000")
    return host, int(port)


def check_header(path: Path) -> tuple[int, ...]:
    """Read only the NIfTI header of ``path``; a 3D volume (or 4D with one frame) passes."""
    import nibabel as nib

    from common.data.nifti import check_claimed_size

    try:
        img: Any = nib.load(str(path))
        shape = tuple(int(v) for v in img.header.get_data_shape())
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise data_error(path, f"cannot read NIfTI header ({type(exc).__name__}: {exc})") from exc
    check_claimed_size(path, img.header)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)) or 0 in shape:
        raise data_error(path, f"expected a 3D volume, header says shape {shape}")
    return shape


def validate_data(data: Path) -> dict[str, Any]:
    """Discover the dataset and check every image/label header; a summary for logs and status."""
    from common.data.layout import discover_dataset

    info = discover_dataset(data)
    for case in info.cases:
        shape = check_header(case.image)
        if case.label is None:
            raise data_error(case.image, "case has no label file")
        if check_header(case.label)[:3] != shape[:3]:
            raise data_error(case.label, f"label shape differs from image shape {shape[:3]}")
    return {"path": str(data.resolve()), "dataset": info.name, "modality": info.modality,
            "cases": len(info.cases)}


def teacher_warnings(teacher_dir: Path) -> list[str]:
    """Non-fatal notes about the serving teacher (a missing one is trained on ``train``)."""
    from site_node.teacher_versions import serving_dir

    teacher_dir = serving_dir(teacher_dir)
    if not (teacher_dir / "best.pt").is_file():
        return [f"{teacher_dir}: no best.pt yet; the coordinator's train message will train "
                "the teacher here (this can take a long time)"]
    from common.data.teacher_card import TeacherCard

    if not TeacherCard.exists(teacher_dir):
        return [f"{teacher_dir}: best.pt has no teacher.json card; it will be retrained"]
    return []


def node_config(args: argparse.Namespace, teacher_dir: Path) -> str:
    """The ``--node-config`` string read by ``site_node.app`` and ``site_node.egress`` (written
    from :class:`~site_node.node_config.NodeSettings`, the readers' own model)."""
    from site_node.node_config import NodeSettings

    def resolved(p: Path | None) -> Path | None:
        return p.resolve() if p is not None else None

    policy = resolved(args.policy)
    if getattr(args, "allow_weight_release", False):  # FedAvg baseline runs only
        from site_node.fedavg import release_policy_file

        policy = release_policy_file(policy, args.state_dir.expanduser().resolve())
        log.warning("weight release ALLOWED (FedAvg baseline run): policy %s", policy)
    try:
        settings = NodeSettings.model_validate({
            "data-path": args.data.resolve(), "teacher-dir": teacher_dir.resolve(),
            "site-name": args.name, "state-dir": args.state_dir.expanduser().resolve(),
            "policy-path": policy, "audit-key": resolved(args.audit_key),
            "coordinator-key": resolved(getattr(args, "coordinator_key", None)),
            "compression": args.compression})
    except ValidationError as exc:
        key, msg = first_error(exc)
        raise ConfigError(f"site-node run: {key}: {msg}") from None
    return settings.to_node_config()


def _supernode_exe() -> str:
    local = Path(sys.executable).parent / "flower-supernode"
    return str(local) if local.exists() else (shutil.which("flower-supernode")
                                              or "flower-supernode")


def tls_args(args: argparse.Namespace) -> list[str]:
    """``--insecure``, or ``--root-certificates CA`` (``--certs`` is the file or its folder)."""
    if args.insecure:
        return ["--insecure"]
    ca = args.certs if args.certs.is_file() else args.certs / "ca.crt"
    if not ca.is_file():
        raise DataError(f"{ca}: CA certificate not found (pass --certs DIR, or --insecure "
                        "for a test federation without TLS)")
    return ["--root-certificates", str(ca.resolve())]


def supernode_command(args: argparse.Namespace, teacher_dir: Path) -> list[str]:
    """The exact ``flower-supernode`` argv for these options (files checked to exist)."""
    host, port = parse_address(args.coordinator)
    cmd = [_supernode_exe(), *tls_args(args), "--superlink", f"{host}:{port}", "--host",
           args.host, "--port", str(args.port), "--node-config", node_config(args, teacher_dir)]
    for path, what in ((args.key, "SuperNode auth key"), (args.audit_key, "audit key"),
                       (getattr(args, "coordinator_key", None), "coordinator audit key")):
        if path is not None and not path.is_file():
            raise DataError(f"{path}: {what} not found")
    if getattr(args, "coordinator_key", None) is not None:
        from common.audit.keys import load_public_key

        load_public_key(args.coordinator_key)  # not an Ed25519 public key: one line, exit 2
    if args.key is not None:
        cmd += ["--auth-supernode-private-key", str(args.key.resolve())]
    if getattr(args, "poll_interval", None) is not None:  # Flower's loop, patched to poll faster
        from site_node import supernode

        try:
            cmd = supernode.command(supernode.check_interval(args.poll_interval), cmd)
        except ValueError as exc:
            raise DataError(f"--poll-interval: {exc}") from None
    return cmd


def supernode_env(state_dir: Path) -> dict[str, str]:
    """Our environment for ``flower-supernode``: ``<state_dir>/bin`` (the app-pinning
    ``flwr-clientapp`` shim, :mod:`site_node.pinned_app`) first on PATH, then this venv's
    ``bin`` (``flower-supernode`` starts ``flower-superexec`` by name), telemetry off unless set."""
    from site_node.pinned_app import write_shim

    shim_dir = write_shim(state_dir / "bin").parent
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(shim_dir), str(Path(sys.executable).parent),
                                   env.get("PATH", "")])
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    return env


def record_event(state_dir: Path, event: dict[str, Any]) -> None:
    """Append one JSON line to ``<state_dir>/runs.jsonl``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / EVENTS).open("a") as fh:
        fh.write(strict_json_dumps(event, sort_keys=True) + "\n")


def main_run(args: argparse.Namespace) -> int:
    """Validate, then exec ``flower-supernode`` (or print its command with ``--dry-run``)."""
    from common.config import safe_name

    safe_name(args.name, "--name")  # it names files on both sides: no path characters
    args.state_dir = args.state_dir.expanduser()
    teacher_dir = args.teacher_dir or args.state_dir / "teacher"
    summary = validate_data(args.data)
    log.info("data OK: %d cases (%s, %s) in %s", summary["cases"], summary["dataset"],
             summary["modality"], summary["path"])
    for line in teacher_warnings(teacher_dir):
        log.warning(line)
    cmd = supernode_command(args, teacher_dir)
    if getattr(args, "coordinator_key", None) is None:
        log.warning("no --coordinator-key: requests signed by any coordinator key are answered "
                    "(pin the coordinator's audit.pub with `site-node keys pin`)")
    if args.insecure:
        log.warning("--insecure: traffic to the coordinator is NOT encrypted")
    if args.dry_run:
        print(shlex.join(cmd))  # the command's result: what would be started
        return 0
    record_event(args.state_dir, {"event": "start", "time": time.time(), "site": args.name,
                                  "coordinator": args.coordinator, "data": summary,
                                  "teacher_dir": str(teacher_dir.resolve()),
                                  "tls": not args.insecure, "port": args.port,
                                  "compression": args.compression or "fp16",
                                  "pinned_clientapp": "site_node.app:app"})
    log.info("starting %s", shlex.join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    env = supernode_env(args.state_dir.resolve())
    if not getattr(args, "no_warm", False):  # warm ClientApp fork server, the SuperNode's child
        from site_node import warm

        warm.spawn(args.state_dir, env)
    os.execve(cmd[0], cmd, env)
    return 1  # pragma: no cover (execv does not return)
