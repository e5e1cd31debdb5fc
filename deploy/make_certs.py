#!/usr/bin/env python3
"""TLS material of a fedmtkd Flower deployment, and the registration of the sites' public keys.

The coordinator's operator runs this. It makes NO site key: each site makes its own node-auth
and audit key pairs (``site-node keys init``) and hands over only ``node.pub`` and
``audit.pub``; the private halves never leave the site.

``make_certs.py --out DIR [--hosts ...]`` writes (private keys mode 0600, everything else 0644)::

    ca.crt  ca.key                      ECDSA P-384 CA (10 years)
    superlink/server.pem  server.key    SuperLink server cert, SANs = --hosts (2 years)
    public/ca.crt                       copy of the CA cert (what sites mount / are sent)
    superexec.secret                    shared secret of SuperLink <-> SuperExec (32 random bytes)

Idempotent: existing files are kept unless ``--force``.

``make_certs.py register --pubs IN --sites a,b --node-dir N --audit-dir A`` checks the public
keys the sites sent (``IN/<site>/node.pub``: OpenSSH ``ecdsa-sha2-nistp384``;
``IN/<site>/audit.pub``: PEM Ed25519; a private key is refused) and installs them as
``N/<site>.pub`` (then ``flwr supernode register N/<site>.pub``) and ``A/<site>.pub`` (the
coordinator's ``site-keys-dir``: every receipt must verify). A site already registered with a
different key is refused unless ``--force``.
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
from cryptography.exceptions import UnsupportedAlgorithm
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


def make_all(out: Path, hosts: Sequence[str], force: bool) -> list[Path]:
    """CA, SuperLink certificate and SuperExec secret; returns the files written. No site key:
    sites make their own (``site-node keys init``) and hand over only the public halves."""
    out.mkdir(parents=True, exist_ok=True)
    written = make_pki(out, hosts, force)
    if write_file(out / "superexec.secret", secrets.token_hex(32).encode(), True, force):
        written.append(out / "superexec.secret")
    return written


# ----------------------------------------------------------------------------- registration
class RegisterError(ValueError):
    """A handed-over public key is missing, of the wrong kind, or differs from the registered."""


def check_node_pub(path: Path) -> bytes:
    """The OpenSSH ``ecdsa-sha2-nistp384`` public key line at ``path`` (what
    ``flwr supernode register`` takes); anything else, a private key above all, is refused."""
    data = _read_pub(path)
    try:
        key = serialization.load_ssh_public_key(data.split(b"\n")[0].strip())
    except (ValueError, UnsupportedAlgorithm):
        raise RegisterError(f"{path}: not an OpenSSH public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != CURVE.name:
        raise RegisterError(f"{path}: not an ECDSA P-384 key (Flower node auth needs one)")
    return data


def check_audit_pub(path: Path) -> bytes:
    """The PEM Ed25519 public key at ``path`` (a site's egress-log signing key)."""
    data = _read_pub(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise RegisterError(f"{path}: not a PEM public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise RegisterError(f"{path}: not an Ed25519 public key")
    return data


def _read_pub(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RegisterError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if b"PRIVATE KEY" in data:
        raise RegisterError(f"{path}: is a PRIVATE key: only the site's .pub files may be "
                            "handed over (the site must make a new key pair)")
    return data


def register_site(pubs: Path, node_dir: Path, audit_dir: Path, site: str,
                  force: bool) -> list[Path]:
    """Install ``pubs/<site>/node.pub`` as ``node_dir/<site>.pub`` and ``pubs/<site>/audit.pub``
    as ``audit_dir/<site>.pub`` after checking their kind; an already registered, different key
    is refused unless ``force`` (a swapped key must be a deliberate act)."""
    src = pubs / site
    pairs = ((check_node_pub(src / "node.pub"), node_dir / f"{site}.pub"),
             (check_audit_pub(src / "audit.pub"), audit_dir / f"{site}.pub"))
    for data, dst in pairs:
        if dst.exists() and dst.read_bytes() != data and not force:
            raise RegisterError(f"{dst}: {site} is registered with a different key (the site "
                                "made new keys? check with its IT, then --force)")
    return [dst for data, dst in pairs if (not dst.exists() or dst.read_bytes() != data)
            and write_file(dst, data, False, True)]


def register_all(pubs: Path, node_dir: Path, audit_dir: Path, sites: Sequence[str],
                 force: bool) -> list[Path]:
    """:func:`register_site` for every site (all checked before the first is written)."""
    for site in sites:
        check_node_pub(pubs / site / "node.pub")
        check_audit_pub(pubs / site / "audit.pub")
    return [p for site in sites for p in register_site(pubs, node_dir, audit_dir, site, force)]


def _names(text: str) -> list[str]:
    """Comma-separated list without empty items."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _site_names(p: argparse.ArgumentParser, text: str) -> list[str]:
    sites = _names(text)
    bad = [s for s in sites if not s.replace("-", "").replace("_", "").isalnum()]
    if bad or not sites:
        p.error(f"need site names of letters, digits, '-' or '_': {bad}")
    return sites


def main_register(argv: Sequence[str]) -> int:
    """``make_certs.py register``: check and install the sites' handed-over public keys."""
    p = argparse.ArgumentParser(prog="make-certs register", description=register_site.__doc__)
    p.add_argument("--pubs", type=Path, required=True,
                   help="folder of <site>/node.pub and <site>/audit.pub, as the sites sent them")
    p.add_argument("--sites", required=True, help="comma-separated site names to register")
    p.add_argument("--node-dir", type=Path, required=True,
                   help="where <site>.pub node-auth keys go (flwr supernode register)")
    p.add_argument("--audit-dir", type=Path, required=True,
                   help="where <site>.pub audit keys go (the coordinator's site-keys-dir)")
    p.add_argument("--force", action="store_true", help="replace a different registered key")
    args = p.parse_args(argv)
    try:
        written = register_all(args.pubs, args.node_dir, args.audit_dir,
                               _site_names(p, args.sites), args.force)
    except RegisterError as exc:
        print(f"make-certs register: error: {exc}", file=sys.stderr)
        return 2
    print(f"make-certs register: {len(written)} public key file(s) written")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (``register ...`` as first argument: :func:`main_register`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["register"]:
        return main_register(argv[1:])
    p = argparse.ArgumentParser(prog="make-certs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--hosts", default=DEFAULT_HOSTS, help="SuperLink SANs, comma-separated")
    p.add_argument("--force", action="store_true", help="regenerate existing keys and certs")
    p.add_argument("--sites", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sites is not None:
        p.error("--sites is gone: each site makes its own keys (`site-node keys init`) and "
                "sends its .pub files; register them with `make_certs.py register`")
    hosts = _names(args.hosts)
    if not hosts:
        p.error("need at least one host")
    written = make_all(args.out, hosts, args.force)
    print(f"make-certs: {len(written)} file(s) written under {args.out}"
          + ("" if written else " (all present; --force to regenerate)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
