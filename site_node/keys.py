"""``site-node keys``: the site's own key pairs, generated on the site.

A site holds two private keys that never leave it; only their public halves go to the
coordinator's operator, who registers them (``deploy/make_certs.py register``):

=============  ===========================================  ==================================
file           what                                         used by
=============  ===========================================  ==================================
``node.key``   ECDSA P-384 node-auth key, OpenSSH format,   ``flower-supernode
               mode 0600                                    --auth-supernode-private-key``
                                                            (``site-node run --key``)
``node.pub``   its public half, ``ecdsa-sha2-nistp384 ...   ``flwr supernode register`` on the
               <site>`` (OpenSSH)                           coordinator's side
``audit.key``  Ed25519 key signing the egress log (PKCS#8   ``site-node run --audit-key``
               PEM), mode 0600
``audit.pub``  its public half (SubjectPublicKeyInfo PEM)   the coordinator's ``site-keys-dir``
                                                            (every receipt must verify)
=============  ===========================================  ==================================

:func:`init_keys` never overwrites an existing private key unless ``force``; a missing public
half is re-derived from its private key. The keys folder is created mode 0700.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.audit.keys import AuditError, fingerprint, load_private_key, load_public_key
from common.config import safe_name

CURVE = ec.SECP384R1()
NODE_KEY_TYPE = "ecdsa-sha2-nistp384"


@dataclass(frozen=True)
class SiteKeys:
    """Paths of a site's keys folder ``root``."""

    root: Path

    @property
    def node_key(self) -> Path:
        """Node-auth private key (OpenSSH)."""
        return self.root / "node.key"

    @property
    def node_pub(self) -> Path:
        """Node-auth public key (OpenSSH one line), for ``flwr supernode register``."""
        return self.root / "node.pub"

    @property
    def audit_key(self) -> Path:
        """Ed25519 audit signing key (PEM)."""
        return self.root / "audit.key"

    @property
    def audit_pub(self) -> Path:
        """Ed25519 audit public key (PEM), the coordinator's ``<site>.pub``."""
        return self.root / "audit.pub"

    @property
    def coordinator_pub(self) -> Path:
        """The coordinator's pinned audit public key (PEM), installed by ``keys pin``."""
        return self.root / "coordinator.pub"

    def public(self) -> list[Path]:
        """The two files to hand to the coordinator's operator."""
        return [self.node_pub, self.audit_pub]


def _write(path: Path, data: bytes, private: bool) -> None:
    """Atomic write, mode 0600 for a private key and 0644 otherwise."""
    mode = 0o600 if private else 0o644
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _node_pub_line(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH)
    return pub + f" {name}\n".encode()


def load_node_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The OpenSSH ECDSA P-384 private key at ``path``; one-line :class:`AuditError` otherwise."""
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise AuditError(f"{path}: cannot read node key ({exc.strerror or exc})") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise AuditError(f"{path}: not an OpenSSH private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != CURVE.name:
        raise AuditError(f"{path}: not an ECDSA P-384 key (Flower node auth needs one)")
    return key


def _node_key(keys: SiteKeys, name: str, force: bool) -> list[Path]:
    if keys.node_key.exists() and not force:
        key = load_node_key(keys.node_key)
        written: list[Path] = []
    else:
        key = ec.generate_private_key(CURVE)
        _write(keys.node_key, key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.OpenSSH,
                                                serialization.NoEncryption()), True)
        written = [keys.node_key]
    if written or not keys.node_pub.exists():
        _write(keys.node_pub, _node_pub_line(key, name), False)
        written.append(keys.node_pub)
    return written


def _audit_key(keys: SiteKeys, force: bool) -> list[Path]:
    if keys.audit_key.exists() and not force:
        key = load_private_key(keys.audit_key)
        written: list[Path] = []
    else:
        key = Ed25519PrivateKey.generate()
        _write(keys.audit_key, key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), True)
        written = [keys.audit_key]
    if written or not keys.audit_pub.exists():
        _write(keys.audit_pub, key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), False)
        written.append(keys.audit_pub)
    return written


def init_keys(root: Path, name: str, force: bool = False) -> tuple[SiteKeys, list[Path]]:
    """Create the node-auth and audit key pairs under ``root`` (folder mode 0700); existing
    private keys are kept unless ``force``. Returns the layout and the files written."""
    safe_name(name, "site name")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    keys = SiteKeys(root)
    return keys, _node_key(keys, name, force) + _audit_key(keys, force)


def ssh_fingerprint(pub_line: str) -> str:
    """``SHA256:<base64>`` of an OpenSSH public key line (what ``ssh-keygen -l`` prints)."""
    blob = base64.b64decode(pub_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def describe_keys(root: Path) -> list[str]:
    """One line per public key of ``root``: file, kind and fingerprint (``keys show``)."""
    keys = SiteKeys(root)
    if not keys.node_key.exists() or not keys.audit_key.exists():
        raise AuditError(f"{root}: no site keys here (run `site-node keys init --dir {root}`)")
    node = _node_pub_line(load_node_key(keys.node_key), "").decode().strip()
    if keys.node_pub.exists() and keys.node_pub.read_text().split()[:2] != node.split()[:2]:
        raise AuditError(f"{keys.node_pub}: does not match {keys.node_key}")
    audit = fingerprint(load_private_key(keys.audit_key).public_key())
    return [f"{keys.node_pub}: node auth {NODE_KEY_TYPE} {ssh_fingerprint(node)}",
            f"{keys.audit_pub}: audit signing {audit}"]


# ----------------------------------------------------------------------------- command line
def pin_coordinator(root: Path, pub: Path) -> Path:
    """Install the coordinator's audit public key ``pub`` (PEM Ed25519, handed over by the
    operator with the CA) as ``root/coordinator.pub``; pass it to ``site-node run
    --coordinator-key`` (node config ``coordinator-key``). Returns the installed file."""
    key = load_public_key(pub)  # not an Ed25519 public key: one-line AuditError
    root.mkdir(parents=True, exist_ok=True)
    dest = SiteKeys(root).coordinator_pub
    _write(dest, key.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo), False)
    return dest


def add_keys_args(p: argparse.ArgumentParser) -> None:
    """``keys init|show|pin --dir DIR [--name SITE] [--force] [--coordinator-pub FILE]``."""
    p.add_argument("action", choices=["init", "show", "pin"])
    p.add_argument("--dir", type=Path, required=True,
                   help="this site's keys folder (private keys stay here, mode 0600)")
    p.add_argument("--name", help="site name written into node.pub (init; required there)")
    p.add_argument("--force", action="store_true",
                   help="init: replace existing private keys (the coordinator must re-register)")
    p.add_argument("--coordinator-pub", dest="coordinator_pub", type=Path,
                   help="pin: the coordinator's audit public key (its audit.pub / "
                        "coordinator.pub), installed as DIR/coordinator.pub")


def main_keys(args: argparse.Namespace) -> int:
    """``site-node keys``: print what to hand over (init), the fingerprints (show), or pin
    the coordinator's audit key (pin)."""
    if args.action == "pin":
        if args.coordinator_pub is None:
            raise AuditError("keys pin: --coordinator-pub FILE is required")
        dest = pin_coordinator(args.dir, args.coordinator_pub)
        print(f"{dest}: coordinator audit key {fingerprint(load_public_key(dest))} pinned; "
              f"start the site with `site-node run ... --coordinator-key {dest}`")
        return 0
    if args.action == "init":
        if not args.name:
            raise AuditError("keys init: --name SITE is required (it labels node.pub)")
        keys, written = init_keys(args.dir, args.name, args.force)
        kept = "" if written else " (existing keys kept; --force replaces them)"
        print(f"site keys in {keys.root}{kept}; hand these PUBLIC files to the coordinator's "
              "operator (never the .key files):")
        for path in keys.public():
            print(f"  {path}")
    for line in describe_keys(args.dir):
        print(line)
    return 0
