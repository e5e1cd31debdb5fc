"""site_node/keys.py and ``site-node keys init|show``: the site's key pairs, made on the site."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.audit.keys import fingerprint, load_private_key, load_public_key
from common.audit.log import AuditLog, verify_log
from site_node.cli import main
from site_node.keys import init_keys, ssh_fingerprint


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_makes_flower_and_audit_key_pairs(tmp_path: Path) -> None:
    keys, written = init_keys(tmp_path / "k", "site-a")
    assert sorted(p.name for p in written) == ["audit.key", "audit.pub", "node.key", "node.pub"]
    assert _mode(keys.root) == 0o700
    assert _mode(keys.node_key) == _mode(keys.audit_key) == 0o600
    assert _mode(keys.node_pub) == _mode(keys.audit_pub) == 0o644
    # what flower-supernode --auth-supernode-private-key loads: OpenSSH ECDSA P-384
    node = serialization.load_ssh_private_key(keys.node_key.read_bytes(), None)
    assert isinstance(node, ec.EllipticCurvePrivateKey) and node.curve.name == "secp384r1"
    # what `flwr supernode register` loads: the matching OpenSSH public line, labelled
    typ, blob, label = keys.node_pub.read_text().split()
    assert (typ, label) == ("ecdsa-sha2-nistp384", "site-a")
    pub = serialization.load_ssh_public_key(f"{typ} {blob}".encode())
    assert pub.public_numbers() == node.public_key().public_numbers()  # type: ignore[union-attr]
    # the audit key signs a log that verifies against audit.pub only
    audit = load_private_key(keys.audit_key)
    log = AuditLog(tmp_path / "egress.jsonl", audit)
    log.append(run_id="r", peer="p", direction="in", msg_type="train")
    assert verify_log(log.path, load_public_key(keys.audit_pub)).ok
    other = Ed25519PrivateKey.generate().public_key()
    assert not verify_log(log.path, other).ok


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    keys, _ = init_keys(tmp_path, "site-a")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert init_keys(tmp_path, "site-a")[1] == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    keys.node_pub.unlink()  # a lost public half is re-derived from the private key
    assert init_keys(tmp_path, "site-a")[1] == [keys.node_pub]
    assert keys.node_pub.read_bytes() == before["node.pub"]
    init_keys(tmp_path, "site-a", force=True)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert all(after[n] != before[n] for n in before)


def test_ssh_fingerprint_is_sha256_of_the_key_blob() -> None:
    blob = b"\x00\x00\x00\x13ecdsa-sha2-nistp384"
    line = "ecdsa-sha2-nistp384 " + base64.b64encode(blob).decode()
    want = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert ssh_fingerprint(line) == "SHA256:" + want


def test_cli_init_prints_public_paths_and_show_fingerprints(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = tmp_path / "keys"
    assert main(["keys", "init", "--dir", str(d), "--name", "site-b"]) == 0
    out = capsys.readouterr().out
    assert f"  {d / 'node.pub'}\n  {d / 'audit.pub'}\n" in out and ".key\n" not in out
    audit_fp = fingerprint(load_public_key(d / "audit.pub"))
    assert f"{d / 'audit.pub'}: audit signing {audit_fp}" in out
    assert main(["keys", "show", "--dir", str(d)]) == 0
    show = capsys.readouterr().out.splitlines()
    node_fp = ssh_fingerprint((d / "node.pub").read_text())
    assert show == [f"{d / 'node.pub'}: node auth ecdsa-sha2-nistp384 {node_fp}",
                    f"{d / 'audit.pub'}: audit signing {audit_fp}"]
    assert main(["keys", "init", "--dir", str(d), "--name", "site-b"]) == 0
    assert "existing keys kept" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["keys", "show", "--dir", str(tmp_path)]) == 2
    assert "no site keys here" in capsys.readouterr().err
    assert main(["keys", "init", "--dir", str(tmp_path)]) == 2
    assert "--name SITE is required" in capsys.readouterr().err
    assert main(["keys", "init", "--dir", str(tmp_path), "--name", "../x"]) == 2
    assert not any(tmp_path.iterdir())
    init_keys(tmp_path, "s")
    (tmp_path / "node.key").write_bytes((tmp_path / "audit.key").read_bytes())  # wrong kind
    assert main(["keys", "show", "--dir", str(tmp_path)]) == 2
    assert "not an OpenSSH private key" in capsys.readouterr().err
