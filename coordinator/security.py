"""Transport and audit material of a local deployment (``coordinator simulate``).

* TLS (default): ``deploy/make_certs.py`` writes a CA and a SuperLink certificate (SANs
  ``localhost``, ``127.0.0.1``) under ``WORKDIR/certs``; the SuperLink serves with it, the
  SuperNodes and the ``flwr`` CLI trust ``certs/ca.crt`` (``root-certificates``).
* ``--node-auth``: the SuperLink also runs ``--enable-supernode-auth``; each site's ECDSA key
  (``certs/sites/<site>/``) is registered with ``flwr supernode register`` before its SuperNode
  starts with ``--auth-supernode-private-key`` (OpenSSH format, converted here).
* ``--insecure``: plaintext gRPC, for local experiments only (a warning is printed).
* Audit keys: each site gets an Ed25519 signing key ``WORKDIR/sites/<site>/audit/site.key``;
  its public half is copied to ``WORKDIR/site_keys/<site>.pub``, the coordinator's
  ``site-keys-dir`` (what a real deployment receives out of band, once per site).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from common.records import load_or_create_key

ROOT = Path(__file__).resolve().parents[1]
INSECURE_WARNING = ("WARNING: --insecure: Flower traffic is NOT encrypted and the SuperLink is "
                    "not authenticated; use only for local simulation on 127.0.0.1")


def make_certs_module() -> ModuleType:
    """``deploy/make_certs.py`` (a script, not a package), imported by path."""
    spec = importlib.util.spec_from_file_location("fedmtkd_make_certs",
                                                  ROOT / "deploy" / "make_certs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Security:
    """Paths and flags of one deployment; ``certs`` is None when insecure."""

    certs: Path | None
    site_keys: Path
    workdir: Path
    node_auth: bool = False

    def superlink_args(self) -> list[str]:
        """TLS flags of ``flower-superlink`` (or ``--insecure``)."""
        if self.certs is None:
            return ["--insecure"]
        c = self.certs
        auth = ["--enable-supernode-auth"] if self.node_auth else []
        return ["--ssl-ca-certfile", str(c / "ca.crt"), "--ssl-certfile",
                str(c / "superlink" / "server.pem"), "--ssl-keyfile",
                str(c / "superlink" / "server.key"), *auth]

    def supernode_args(self, site: str) -> list[str]:
        """TLS (and node-auth) flags of ``flower-supernode`` (or ``--insecure``)."""
        if self.certs is None:
            return ["--insecure"]
        auth = ["--auth-supernode-private-key", str(self.node_key(site))] if self.node_auth else []
        return ["--root-certificates", str(self.certs / "ca.crt"), *auth]

    def node_key(self, site: str) -> Path:
        """The site's ECDSA node-auth key in OpenSSH format (what ``flower-supernode`` loads)."""
        assert self.certs is not None
        return self.certs / "sites" / site / f"{site}.ssh"

    def node_pub(self, site: str) -> Path:
        """The site's OpenSSH public key, for ``flwr supernode register``."""
        assert self.certs is not None
        return self.certs / "sites" / site / f"{site}.pub"

    def flwr_connection(self) -> str:
        """The TLS lines of the ``flwr`` CLI connection in ``config.toml``."""
        if self.certs is None:
            return "insecure = true\n"
        return f'root-certificates = "{self.certs / "ca.crt"}"\n'

    def site_key(self, site: str) -> Path:
        """The site's Ed25519 audit key (node config ``audit-key``)."""
        return self.workdir / "sites" / site / "audit" / "site.key"

    def site_state(self, site: str) -> Path:
        """The site's egress state folder (node config ``state-dir``)."""
        return self.workdir / "sites" / site


def openssh_private_key(pem_key: Path, out: Path) -> None:
    """Rewrite ``make_certs``' PKCS#8 ECDSA key in the OpenSSH format Flower 1.42 requires."""
    import os

    from cryptography.hazmat.primitives import serialization as ser

    key = ser.load_pem_private_key(pem_key.read_bytes(), password=None)
    data = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption())
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def prepare_security(workdir: Path, sites: list[str], insecure: bool,
                     node_auth: bool = False) -> Security:
    """Certificates (unless ``insecure``), node-auth keys and per-site audit keys."""
    certs = None
    if insecure:
        if node_auth:
            raise ValueError("--node-auth needs TLS (the SuperLink refuses it with --insecure)")
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
    else:
        certs = workdir / "certs"
        make_certs_module().make_all(certs, sites, ["localhost", "127.0.0.1"], False)
    sec = Security(certs, workdir / "site_keys", workdir, node_auth)
    for site in sites if node_auth else []:
        openssh_private_key(sec.node_pub(site).with_suffix(".key"), sec.node_key(site))
    sec.site_keys.mkdir(parents=True, exist_ok=True)
    for site in sites:
        load_or_create_key(sec.site_key(site))
        shutil.copyfile(sec.site_key(site).with_suffix(".pub"), sec.site_keys / f"{site}.pub")
    return sec
