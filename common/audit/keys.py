"""Ed25519 keys of the exchange log: generate, load (refusing loose file modes), fingerprint,
and the signature check; plus :class:`AuditError`, the one error of the audit modules.

Part of the audit log (:mod:`common.audit.log`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.io import atomic_write_bytes


class AuditError(ValueError):
    """An audit log or key file is unusable (corrupt tail, wrong key type, loose file mode)."""


# ----------------------------------------------------------------------------- keys
def fingerprint(pub: Ed25519PublicKey) -> str:
    """``ed25519:<sha256 hex of the raw 32-byte public key>``."""
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()


def generate_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """New Ed25519 key as ``<name>.key`` (PKCS8 PEM, mode 0600) and ``<name>.pub``; no overwrite."""
    directory.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    atomic_write_bytes(pub_path, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv_path, pub_path


def _key_bytes(path: Path, kind: str) -> bytes:
    """The key file's bytes; a missing or unreadable file is an AuditError naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AuditError(f"{path}: cannot read {kind} key ({exc.strerror or exc})") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load a PEM Ed25519 private key; refused when group/other may read it."""
    data = _key_bytes(path, "private")
    if path.stat().st_mode & 0o077:
        raise AuditError(f"{path}: private key is readable by others (chmod 600 it)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise AuditError(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load a PEM Ed25519 public key; a missing file or another kind of key is one line."""
    data = _key_bytes(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise AuditError(f"{path}: not a PEM public key (a private key or another file?)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path}: not an Ed25519 public key")
    return key


def _signature_ok(pub: Ed25519PublicKey, entry_hash: str, signature: str) -> bool:
    try:
        pub.verify(bytes.fromhex(signature), entry_hash.encode("ascii"))
    except (InvalidSignature, ValueError):
        return False
    return True
