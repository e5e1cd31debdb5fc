"""Canary proof: a pattern planted in a site's private images never crosses the wire.

Real SuperLink + 2 SuperNodes on 127.0.0.1 (``coordinator simulate --insecure``, the compose
topology through the container entrypoints: TLS would hide the bytes), with a recording TCP
proxy between the SuperNodes and the SuperLink: every byte the sites exchanged is scanned for
the canary's float32 and float16 bytes. A positive control (proxy slice bytes sent to the
sites) shows the capture does see array payloads in clear.
"""

from __future__ import annotations

import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from tests._helpers import QUICK_TEACHER, experiment_toml, read_jsonl, tiny_teacher_config

SITES = ("site_a", "site_b")
CANARY = (np.arange(16, dtype=np.float32) * 7.25 + 3141.5).astype(np.float32)


class RecordingProxy:
    """Threaded TCP forwarder 127.0.0.1:port -> 127.0.0.1:target recording both directions."""

    def __init__(self) -> None:
        self.captured: list[bytearray] = []
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.5)
        self.stop = threading.Event()

    def start(self, target: int) -> int:
        """Begin forwarding to ``target``; returns the proxy's port."""
        self.target = target
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()
        return int(self.server.getsockname()[1])

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            for src, dst in ((client, upstream), (upstream, client)):
                buf = bytearray()
                with self.lock:
                    self.captured.append(buf)
                threading.Thread(target=self._pump, args=(src, dst, buf), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, buf: bytearray) -> None:
        src.settimeout(None)
        try:
            while chunk := src.recv(65536):
                buf.extend(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop accepting (open connections end with their peers)."""
        self.stop.set()
        if hasattr(self, "acceptor"):
            self.acceptor.join(timeout=5)
        self.server.close()

    def streams(self) -> list[bytes]:
        """Everything captured, one bytes object per direction of each connection."""
        with self.lock:
            return [bytes(b) for b in self.captured]


def plant_canary(site: Path) -> int:
    """Write ``CANARY`` into 8 rows of every image of ``site`` (NIfTI, in place)."""
    import nibabel as nib

    files = sorted((site / "imagesTr").glob("*.nii*"))
    for f in files:
        img = nib.load(str(f))
        data = np.asarray(img.dataobj, dtype=np.float32).copy()
        for y in range(8):
            data[8:24, 20 + y, :] = CANARY[:, None]
        nib.save(nib.Nifti1Image(data, img.affine, img.header), str(f))
    return len(files)


@pytest.fixture(scope="module")
def canary_setup(tiny_sites: dict, tiny_teachers: dict,
                 tmp_path_factory: pytest.TempPathFactory) -> dict:
    """site_a = a copy of the tiny site with the canary planted, and a barely trained teacher
    fitted on that copy (the canary is in its training data too); site_b = the session's tiny
    site and teacher."""
    from site_node.train import run_training

    root = tmp_path_factory.mktemp("canary")
    data = {"site_a": root / "data_a", "site_b": tiny_sites["site_b"]}
    shutil.copytree(tiny_sites["site_a"], data["site_a"])
    assert plant_canary(data["site_a"]) >= 1
    teachers = {"site_a": root / "teacher_site_a", "site_b": tiny_teachers["site_b"]}
    run_training(data["site_a"], tiny_teacher_config(**QUICK_TEACHER), teachers["site_a"])
    return {"data": data, "teachers": teachers, "proxy": tiny_sites["proxy"], "root": root}


def _config(setup: dict, tmp: Path) -> Path:
    return experiment_toml(tmp, "canary", setup["proxy"],
                           {n: (setup["data"][n], setup["teachers"][n]) for n in SITES},
                           min_sites=2, kd={"temperature": 3.0})


def _audit_cli(log: Path, pub: Path, *extra: str, coordinator: bool = False) -> int:
    """What ``site-node audit`` (or, with ``coordinator``, ``coordinator audit``) runs
    (common.audit.cli)."""
    import argparse

    from common.audit.cli import add_audit_args, run_audit
    from common.audit.report import coordinator_report

    p = argparse.ArgumentParser()
    add_audit_args(p)
    return run_audit(p.parse_args(["--log", str(log), "--pub", str(pub), *extra]),
                     coordinator_report if coordinator else None)


@pytest.mark.slow
def test_canary_never_crosses_the_wire(canary_setup: dict, tmp_path: Path) -> None:
    from common.audit.keys import load_public_key
    from common.audit.log import verify_log
    from coordinator.distill.proxy import load_proxy
    from coordinator.topology.simulate import SiteNode, simulate

    proxy = RecordingProxy()
    nodes = [SiteNode(n, canary_setup["data"][n], canary_setup["teachers"][n]) for n in SITES]
    try:
        rc = simulate(nodes, _config(canary_setup, tmp_path), tmp_path / "work",
                      {"timeout": 120.0}, timeout=240.0, insecure=True, fleet_port=proxy.start)
    finally:
        proxy.close()
    log = (tmp_path / "work" / "logs" / "coordinator.log").read_text(errors="replace")
    assert rc == 0, log[-3000:]
    wire = b"".join(s + b"|" for s in proxy.streams())
    assert len(wire) > 100_000
    # positive control: the proxy slices sent to the sites are visible in the capture
    images = load_proxy(canary_setup["proxy"], 32).images
    probes = [images[i, 0, 16, :].tobytes() for i in range(0, len(images), 7)]
    assert any(p in wire for p in probes), "capture does not see array payloads"
    for pattern in (CANARY.tobytes(), CANARY.astype(np.float16).tobytes(),
                    CANARY[:8].tobytes(), CANARY[8:].astype(np.float16).tobytes()):
        assert pattern not in wire, "private canary bytes crossed the wire"

    out = tmp_path / "exp" / "audit"
    coord = read_jsonl(out / "coordinator.jsonl")
    assert verify_log(out / "coordinator.jsonl",
                      load_public_key(out / "coordinator.pub")).ok
    for name in SITES:
        site_log = tmp_path / "work" / "sites" / name / "audit" / "egress.jsonl"
        pub_path = tmp_path / "work" / "registry" / "audit" / f"{name}.pub"  # as registered
        pub = load_public_key(pub_path)
        assert verify_log(site_log, pub).ok
        sent = [e for e in read_jsonl(site_log) if e["decision"] == "sent"]
        got = [e for e in coord if e["direction"] == "in" and e["decision"] == "received"
               and e["config"].get("site_name") == name]
        assert len(sent) == len(got) >= 3  # train + query + evaluate at least
        queries = [e for e in sent if e["msg_type"] == "query.teacher_outputs"]
        # the site's codec works at the student's KD temperature, carried by the query
        assert queries and all(e["config"]["temperature"] == 3.0 for e in queries)
        assert sorted(e["entry_hash"] for e in sent) == sorted(e["config"]["receipt"]
                                                              for e in got)
        assert _audit_cli(site_log, pub_path) == 0
        # anchored: each log holds signed heads of the other, and both logs are whole
        assert _audit_cli(site_log, pub_path, "--peer-log", str(out / "coordinator.jsonl")) == 0
        assert _audit_cli(out / "coordinator.jsonl", out / "coordinator.pub", "--peer-log",
                          str(site_log), "--peer-pub", str(pub_path), coordinator=True) == 0
    receipts = read_jsonl(out / "receipts.jsonl")
    assert receipts and all(r["verified"] for r in receipts)


@pytest.mark.slow
def test_node_auth_registers_sites_over_tls(tiny_sites: dict, tmp_path: Path) -> None:
    """The default TLS topology (entrypoints): the SuperLink runs --enable-supernode-auth, the
    coordinator registers each site's key, both SuperNodes are admitted (the run itself is not
    awaited: the transport admission is under test)."""
    import time

    from coordinator.topology.env import SiteNode, base_env
    from coordinator.topology.simulate import make_plan
    from coordinator.topology.supervisor import Processes, start_topology

    sites = [SiteNode(n, tiny_sites[n], tmp_path / f"teacher_{n}") for n in SITES]
    config = tmp_path / "exp.toml"
    config.write_text(f'name = "auth"\nout = "{tmp_path / "exp"}"\n'
                      f'proxy = "{tiny_sites["proxy"]}"\n'
                      + "".join(f'[[sites]]\nname = "{n}"\ndata = "{tiny_sites[n]}"\n'
                                f'teacher_dir = "{tmp_path / n}"\n' for n in SITES))
    plan = make_plan(sites, config, tmp_path, {}, timeout=60.0, insecure=False)
    procs = Processes(tmp_path / "logs", base_env(), tmp_path)
    link_log, argv = tmp_path / "logs" / "superlink.log", {}
    try:
        start_topology(procs, plan)
        deadline = time.monotonic() + 90
        while (link_log.read_text(errors="replace").count("Activated node_id") < len(SITES)
               and time.monotonic() < deadline):
            time.sleep(0.5)
        # the entrypoints exec: these pids are flower-superlink and flower-supernode now
        argv = {name: Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")
                for name, p in procs.named.items() if p.poll() is None}
    finally:
        procs.stop_all()
    logs = {p.stem: p.read_text(errors="replace") for p in (tmp_path / "logs").iterdir()}
    assert logs["superlink"].count("Activated node_id") == len(SITES), logs
    assert b"--enable-supernode-auth" in argv["superlink"]
    for name in SITES:
        assert b"--auth-supernode-private-key" in argv[f"site-{name}"]
        assert f"could not register {name}" not in logs["coordinator"]
    assert logs["coordinator"].count("registered successfully") == len(SITES), logs["coordinator"]
    # keys were made on each site (its own folder); only the .pub files reached the coordinator
    assert not (tmp_path / "certs" / "sites").exists()
    for name in SITES:
        assert (tmp_path / "sites" / name / "keys" / "node.key").stat().st_mode & 0o077 == 0
        assert sorted(p.name for p in (tmp_path / "pubkeys" / name).iterdir()) == [
            "audit.pub", "node.pub"]
        assert (tmp_path / "registry" / "audit" / f"{name}.pub").read_bytes() == (
            tmp_path / "sites" / name / "keys" / "audit.pub").read_bytes()
