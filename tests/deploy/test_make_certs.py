"""deploy/make_certs.py: CA and SuperLink cert with SANs, no site key at all, idempotence; and
``register``: the sites' handed-over public keys checked and installed, private keys and key
swaps refused."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509

from site_node.keys import init_keys
from tests.deploy._load import load_script

mc = load_script("make_certs")
SITES = ["site-a", "site-b"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_generate_verify_and_rerun(tmp_path: Path) -> None:
    assert mc.main(["--out", str(tmp_path)]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    srv = x509.load_pem_x509_certificate((tmp_path / "superlink/server.pem").read_bytes())
    srv.verify_directly_issued_by(ca)
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "superlink"}
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    for rel in ["ca.key", "superlink/server.key", "superexec.secret"]:
        assert stat.S_IMODE((tmp_path / rel).stat().st_mode) == 0o600, rel
    # exactly the CA + SuperLink material: no site (or audit) key is made by the operator
    assert sorted(_snapshot(tmp_path)) == ["ca.crt", "ca.key", "public/ca.crt",
                                           "superexec.secret", "superlink/server.key",
                                           "superlink/server.pem"]
    before = _snapshot(tmp_path)
    assert mc.make_all(tmp_path, ["localhost"], force=False) == []
    assert _snapshot(tmp_path) == before
    mc.make_all(tmp_path, ["localhost", "superlink"], force=True)
    assert _snapshot(tmp_path)["ca.key"] != before["ca.key"]


def test_old_sites_flag_is_refused_with_the_new_flow(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        mc.main(["--out", str(tmp_path), "--sites", "site-a"])
    assert exc.value.code == 2 and "site-node keys init" in capsys.readouterr().err
    assert not tmp_path.joinpath("ca.key").exists()


def _handed_over(tmp_path: Path) -> Path:
    """What the sites sent: each ran `site-node keys init` and copied only the .pub files."""
    pubs = tmp_path / "pubs"
    for site in SITES:
        keys, _ = init_keys(tmp_path / "sites" / site / "keys", site)
        (pubs / site).mkdir(parents=True)
        for pub in keys.public():
            (pubs / site / pub.name).write_bytes(pub.read_bytes())
    return pubs


def _register(tmp_path: Path, pubs: Path, *extra: str) -> int:
    return int(mc.main(["register", "--pubs", str(pubs), "--sites", ",".join(SITES),
                        "--node-dir", str(tmp_path / "reg/node"),
                        "--audit-dir", str(tmp_path / "reg/audit"), *extra]))


def test_register_installs_exactly_the_sites_public_keys(tmp_path: Path) -> None:
    pubs = _handed_over(tmp_path)
    assert _register(tmp_path, pubs) == 0
    for site in SITES:
        node = (tmp_path / "reg/node" / f"{site}.pub").read_text()
        assert node.startswith("ecdsa-sha2-nistp384 ") and node.strip().endswith(site)
        assert node == (tmp_path / "sites" / site / "keys/node.pub").read_text()
        audit = (tmp_path / "reg/audit" / f"{site}.pub").read_bytes()
        assert audit == (tmp_path / "sites" / site / "keys/audit.pub").read_bytes()
    assert sorted(p.name for p in (tmp_path / "reg").rglob("*") if p.is_file()) == [
        "site-a.pub", "site-a.pub", "site-b.pub", "site-b.pub"]
    before = _snapshot(tmp_path / "reg")
    assert mc.register_all(pubs, tmp_path / "reg/node", tmp_path / "reg/audit", SITES,
                           force=False) == []  # already registered: nothing rewritten
    assert _snapshot(tmp_path / "reg") == before


def test_register_refuses_private_keys_wrong_kinds_and_swaps(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pubs = _handed_over(tmp_path)
    good = (pubs / "site-b" / "audit.pub").read_bytes()
    # a private key handed over by mistake: refused, nothing registered
    (pubs / "site-b" / "audit.pub").write_bytes(
        (tmp_path / "sites/site-b/keys/audit.key").read_bytes())
    assert _register(tmp_path, pubs) == 2
    assert "PRIVATE key" in capsys.readouterr().err
    assert not (tmp_path / "reg").exists()
    # an Ed25519 key where the node-auth ECDSA key belongs
    (pubs / "site-b" / "audit.pub").write_bytes(good)
    (pubs / "site-a" / "node.pub").write_bytes(good)
    assert _register(tmp_path, pubs) == 2
    assert "not an OpenSSH public key" in capsys.readouterr().err
    # a registered site whose key changed: refused unless --force
    (pubs / "site-a" / "node.pub").write_bytes(
        (tmp_path / "sites/site-a/keys/node.pub").read_bytes())
    assert _register(tmp_path, pubs) == 0
    init_keys(tmp_path / "sites/site-a/keys", "site-a", force=True)
    new = (tmp_path / "sites/site-a/keys/audit.pub").read_bytes()
    (pubs / "site-a" / "audit.pub").write_bytes(new)
    assert _register(tmp_path, pubs) == 2
    assert "registered with a different key" in capsys.readouterr().err
    assert _register(tmp_path, pubs, "--force") == 0
    assert (tmp_path / "reg/audit/site-a.pub").read_bytes() == new
