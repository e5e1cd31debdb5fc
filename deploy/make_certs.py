#!/usr/bin/env python3
"""Generate the TLS and node-authentication material of a fedmtkd Flower deployment.

Writes under ``--out DIR`` (private keys mode 0600, everything else 0644)::

    ca.crt  ca.key                      ECDSA P-384 CA (10 years)
    superlink/server.pem  server.key    SuperLink server cert, SANs = --hosts (2 years)
    public/ca.crt                       copy of the CA cert (what sites mount)
    sites/<site>/<site>.key             ECDSA P-384 node-auth private key (PEM, PKCS#8)
    sites/<site>/<site>.ssh             the same key in OpenSSH format (what ``flower-supernode
                                        --auth-supernode-private-key`` loads)
    sites/<site>/<site>.pub             its public key in OpenSSH format (ecdsa-sha2-nistp384),
                                        for ``flwr supernode register``
    sites/<site>/audit.key  audit.pub   Ed25519 key signing the site's egress log (PEM)
    audit/<site>.pub                    copy of each audit.pub: the coordinator's
                                        ``site-keys-dir`` (every receipt must verify)
    superexec.secret                    shared secret of SuperLink <-> SuperExec (32 random bytes)

Idempotent: existing files are kept unless ``--force``.
Usage: ``python deploy/make_certs.py --out DIR --sites site-a,site-b,site-c [--hosts ...]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = "localhost,127.0.0.1,superlink"
CURVE = ec.SECP384R1()


def write_file(path: Path, data: bytes, private: bool, force: bool) -> bool:
    """Write ``data`` to ``path`` (0600 if ``private`` else 0644); False if kept as it was."""
    if path.exists() and not force:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600 if private else 0o644)
    os.replace(tmp, path)
    return True


def key_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """PEM (PKCS#8, unencrypted) of a private key."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """An existing ECDSA private key."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an ECDSA private key")
    return key


def ensure_key(path: Path, force: bool) -> ec.EllipticCurvePrivateKey:
    """Load the key at ``path``, or create (and write) a new P-384 key."""
    if path.exists() and not force:
        return load_key(path)
    key = ec.generate_private_key(CURVE)
    write_file(path, key_pem(key), private=True, force=True)
    return key


def _cert_builder(subject: str, issuer: x509.Name, days: int) -> x509.CertificateBuilder:
    """Common fields: subject CN, issuer, serial, validity from one hour ago."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days)))


def make_ca(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """Self-signed CA certificate."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmtkd CA")])
    builder = _cert_builder("fedmtkd CA", name, 3650).public_key(key.public_key())
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False), critical=True)
    return builder.sign(key, hashes.SHA384())


def san_entries(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """IP addresses become IPAddress SANs, anything else a DNSName SAN."""
    out: list[x509.GeneralName] = []
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def make_server_cert(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                     key: ec.EllipticCurvePrivateKey, hosts: Sequence[str]) -> x509.Certificate:
    """SuperLink server certificate signed by the CA, with ``hosts`` as SANs."""
    builder = _cert_builder(hosts[-1], ca.subject, 730).public_key(key.public_key())
    builder = builder.add_extension(x509.SubjectAlternativeName(san_entries(hosts)),
                                    critical=False)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                    critical=True)
    builder = builder.add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(ca_key, hashes.SHA384())


def make_pki(out: Path, hosts: Sequence[str], force: bool) -> list[Path]:
    """CA + SuperLink server cert (re-issued only when missing or ``force``)."""
    written: list[Path] = []
    ca_new = force or not (out / "ca.crt").exists() or not (out / "ca.key").exists()
    ca_key = ensure_key(out / "ca.key", ca_new)
    if ca_new:
        ca = make_ca(ca_key)
        write_file(out / "ca.crt", ca.public_bytes(serialization.Encoding.PEM), False, True)
        written += [out / "ca.key", out / "ca.crt"]
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    pem = ca.public_bytes(serialization.Encoding.PEM)
    if write_file(out / "public" / "ca.crt", pem, False, ca_new):
        written.append(out / "public" / "ca.crt")
    srv = out / "superlink"
    if ca_new or not (srv / "server.pem").exists() or not (srv / "server.key").exists():
        key = ensure_key(srv / "server.key", True)
        cert = make_server_cert(ca, ca_key, key, hosts)
        write_file(srv / "server.pem", cert.public_bytes(serialization.Encoding.PEM), False, True)
        written += [srv / "server.key", srv / "server.pem"]
    return written


def make_site(out: Path, site: str, force: bool) -> list[Path]:
    """Node-auth key (PEM, OpenSSH private and public) and audit key of one site."""
    return make_node_key(out, site, force) + make_audit_key(out, site, force)


def make_node_key(out: Path, site: str, force: bool) -> list[Path]:
    """ECDSA P-384 key pair of one site: PEM and OpenSSH private key + OpenSSH public key."""
    folder = out / "sites" / site
    key_path, pub_path = folder / f"{site}.key", folder / f"{site}.pub"
    written: list[Path] = []
    if key_path.exists() and pub_path.exists() and not force:
        key = load_key(key_path)
    else:
        key = ensure_key(key_path, True)
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                            serialization.PublicFormat.OpenSSH)
        write_file(pub_path, pub + f" {site}\n".encode(), False, True)
        written = [key_path, pub_path]
    ssh = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())
    if write_file(folder / f"{site}.ssh", ssh, True, bool(written)):
        written.append(folder / f"{site}.ssh")
    return written


def make_audit_key(out: Path, site: str, force: bool) -> list[Path]:
    """Ed25519 audit key of one site (``sites/<site>/audit.key``), its public half beside it
    and in ``audit/<site>.pub``."""
    key_path = out / "sites" / site / "audit.key"
    written: list[Path] = []
    if key_path.exists() and not force:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{key_path}: not an Ed25519 private key")
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        write_file(key_path, key_pem(key), private=True, force=True)
        written.append(key_path)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    for path in (key_path.with_suffix(".pub"), out / "audit" / f"{site}.pub"):
        if write_file(path, pub, False, bool(written)):
            written.append(path)
    return written


def make_all(out: Path, sites: Sequence[str], hosts: Sequence[str], force: bool) -> list[Path]:
    """Everything listed in the module docstring; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = make_pki(out, hosts, force)
    for site in sites:
        written += make_site(out, site, force)
    if write_file(out / "superexec.secret", secrets.token_hex(32).encode(), True, force):
        written.append(out / "superexec.secret")
    return written


def _names(text: str) -> list[str]:
    """Comma-separated list without empty items."""
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(prog="make-certs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--sites", required=True, help="comma-separated site names")
    p.add_argument("--hosts", default=DEFAULT_HOSTS, help="SuperLink SANs, comma-separated")
    p.add_argument("--force", action="store_true", help="regenerate existing keys and certs")
    args = p.parse_args(argv)
    sites, hosts = _names(args.sites), _names(args.hosts)
    bad = [s for s in sites if not s.replace("-", "").replace("_", "").isalnum()]
    if bad or not sites or not hosts:
        p.error(f"need site names of letters, digits, '-' or '_' and at least one host: {bad}")
    written = make_all(args.out, sites, hosts, args.force)
    print(f"make-certs: {len(written)} file(s) written under {args.out}"
          + ("" if written else " (all present; --force to regenerate)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
