"""deploy/make_certs.py: CA, SuperLink cert with SANs, OpenSSH site keys, audit keys,
idempotence."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)

from tests.deploy._load import load_script

mc = load_script("make_certs")
SITES = ["site-a", "site-b"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_generate_verify_and_rerun(tmp_path: Path) -> None:
    assert mc.main(["--out", str(tmp_path), "--sites", ",".join(SITES)]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    srv = x509.load_pem_x509_certificate((tmp_path / "superlink/server.pem").read_bytes())
    srv.verify_directly_issued_by(ca)
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "superlink"}
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    for site in SITES:
        text = (tmp_path / f"sites/{site}/{site}.pub").read_text()
        assert text.startswith("ecdsa-sha2-nistp384 ")
        key = load_ssh_public_key(text.encode())
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
    private = ["ca.key", "superlink/server.key", "superexec.secret"]
    private += [f"sites/{s}/{s}.{ext}" for s in SITES for ext in ("key", "ssh")]
    private += [f"sites/{s}/audit.key" for s in SITES]
    for rel in private:
        assert stat.S_IMODE((tmp_path / rel).stat().st_mode) == 0o600, rel
    _check_site_keys(tmp_path)
    before = _snapshot(tmp_path)
    assert mc.make_all(tmp_path, SITES, ["localhost"], force=False) == []
    assert _snapshot(tmp_path) == before
    mc.make_all(tmp_path, SITES, ["localhost", "superlink"], force=True)
    assert _snapshot(tmp_path)["ca.key"] != before["ca.key"]


def _check_site_keys(root: Path) -> None:
    """The OpenSSH node key is the PEM one; the audit key is Ed25519 and published."""
    for site in SITES:
        pem = load_pem_private_key((root / f"sites/{site}/{site}.key").read_bytes(), None)
        ssh = load_ssh_private_key((root / f"sites/{site}/{site}.ssh").read_bytes(), None)
        assert isinstance(pem, ec.EllipticCurvePrivateKey)
        assert isinstance(ssh, ec.EllipticCurvePrivateKey)
        assert ssh.private_numbers() == pem.private_numbers()
        audit = load_pem_private_key((root / f"sites/{site}/audit.key").read_bytes(), None)
        assert isinstance(audit, ed25519.Ed25519PrivateKey)
        pub = (root / "audit" / f"{site}.pub").read_bytes()
        assert pub == (root / f"sites/{site}/audit.pub").read_bytes()
        assert pub.startswith(b"-----BEGIN PUBLIC KEY-----")
