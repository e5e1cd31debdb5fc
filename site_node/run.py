"""``site-node --data DIR --coordinator HOST:PORT --name SITE``: start this hospital's SuperNode.

Checks first, then hands over to ``flower-supernode``: the data folder is discovered and every
case's NIfTI header read (a problem is one line naming the file, exit 2); the teacher folder is
checked (no ``best.pt`` is only a warning: the coordinator's ``train`` message trains it); the
TLS CA (``<certs>/ca.crt``) and the optional SuperNode auth key must exist. Each start is
appended to ``<state-dir>/runs.jsonl`` (read by ``site-node status``); the audit log of the
egress gate lands in ``<state-dir>/audit/egress.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from common.data.errors import DataError, data_error

DEFAULT_STATE_DIR = Path(os.environ.get("FEDMTKD_STATE_DIR", "~/.fedmtkd/site-node"))
EVENTS = "runs.jsonl"


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``site-node run`` (also accepted without the word ``run``)."""
    p.add_argument("--data", type=Path, required=True, help="this site's private dataset folder")
    p.add_argument("--coordinator", required=True, help="SuperLink address HOST:PORT")
    p.add_argument("--name", required=True, help="site name reported to the coordinator")
    p.add_argument("--teacher-dir", dest="teacher_dir", type=Path,
                   help="teacher run folder (default: STATE_DIR/teacher)")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--certs", type=Path, default=Path("certs"),
                     help="folder with the federation's ca.crt (TLS; default ./certs)")
    tls.add_argument("--insecure", action="store_true", help="no TLS (testing only)")
    p.add_argument("--key", type=Path, help="SuperNode auth private key (ECDSA, PEM)")
    p.add_argument("--policy", type=Path, help="egress policy TOML (default: built-in)")
    p.add_argument("--port", type=int, default=9094, help="local ClientApp runtime port")
    p.add_argument("--state-dir", dest="state_dir", type=Path, default=DEFAULT_STATE_DIR,
                   help="run history and egress audit log (default %(default)s)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="check everything, print the flower-supernode command, start nothing")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``; anything else is a one-line DataError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DataError(f"--coordinator {text!r}: expected HOST:PORT, e.g. 10.0.0.5:8000")
    return host, int(port)


def check_header(path: Path) -> tuple[int, ...]:
    """Read only the NIfTI header of ``path``; a 3D volume (or 4D with one frame) passes."""
    import nibabel as nib

    try:
        img: Any = nib.load(str(path))
        shape = tuple(int(v) for v in img.header.get_data_shape())
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise data_error(path, f"cannot read NIfTI header ({type(exc).__name__}: {exc})") from exc
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
    """Non-fatal notes about the teacher folder (a missing one is trained on ``train``)."""
    if not (teacher_dir / "best.pt").is_file():
        return [f"{teacher_dir}: no best.pt yet; the coordinator's train message will train "
                "the teacher here (this can take a long time)"]
    if not (teacher_dir / "teacher.json").is_file():
        return [f"{teacher_dir}: best.pt has no teacher.json card; it will be retrained"]
    return []


def _q(v: object) -> str:
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def node_config(args: argparse.Namespace, teacher_dir: Path) -> str:
    """The ``--node-config`` string read by ``site_node.app`` and ``site_node.egress``."""
    items = {"data-path": args.data.resolve(), "teacher-dir": teacher_dir.resolve(),
             "site-name": args.name, "state-dir": args.state_dir.expanduser().resolve()}
    if args.policy is not None:
        items["policy-path"] = args.policy.resolve()
    return " ".join(f"{k}={_q(v)}" for k, v in items.items())


def _supernode_exe() -> str:
    local = Path(sys.executable).parent / "flower-supernode"
    return str(local) if local.exists() else (shutil.which("flower-supernode")
                                              or "flower-supernode")


def supernode_command(args: argparse.Namespace, teacher_dir: Path) -> list[str]:
    """The exact ``flower-supernode`` argv for these options (files checked to exist)."""
    host, port = parse_address(args.coordinator)
    cmd = [_supernode_exe(), "--superlink", f"{host}:{port}", "--port", str(args.port),
           "--node-config", node_config(args, teacher_dir)]
    if args.insecure:
        cmd.insert(1, "--insecure")
    else:
        ca = args.certs / "ca.crt"
        if not ca.is_file():
            raise DataError(f"{ca}: CA certificate not found (pass --certs DIR, or --insecure "
                            "for a test federation without TLS)")
        cmd[1:1] = ["--root-certificates", str(ca.resolve())]
    if args.key is not None:
        if not args.key.is_file():
            raise DataError(f"{args.key}: SuperNode auth key not found")
        cmd += ["--auth-supernode-private-key", str(args.key.resolve())]
    return cmd


def supernode_env() -> dict[str, str]:
    """Our environment with this venv's ``bin`` first on PATH (``flower-supernode`` starts
    ``flower-superexec`` by name) and Flower telemetry off unless set."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    return env


def record_event(state_dir: Path, event: dict[str, Any]) -> None:
    """Append one JSON line to ``<state_dir>/runs.jsonl``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / EVENTS).open("a") as fh:
        fh.write(json.dumps(event, sort_keys=True) + "\n")


def main_run(args: argparse.Namespace) -> int:
    """Validate, then exec ``flower-supernode`` (or print its command with ``--dry-run``)."""
    args.state_dir = args.state_dir.expanduser()
    teacher_dir = args.teacher_dir or args.state_dir / "teacher"
    summary = validate_data(args.data)
    print(f"site-node: data OK: {summary['cases']} cases ({summary['dataset']}, "
          f"{summary['modality']}) in {summary['path']}")
    for line in teacher_warnings(teacher_dir):
        print(f"site-node: warning: {line}")
    cmd = supernode_command(args, teacher_dir)
    if args.insecure:
        print("site-node: warning: --insecure: traffic to the coordinator is NOT encrypted")
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    record_event(args.state_dir, {"event": "start", "time": time.time(), "site": args.name,
                                  "coordinator": args.coordinator, "data": summary,
                                  "teacher_dir": str(teacher_dir.resolve()),
                                  "tls": not args.insecure, "port": args.port})
    sys.stdout.flush()
    os.execve(cmd[0], cmd, supernode_env())
    return 1  # pragma: no cover (execv does not return)
