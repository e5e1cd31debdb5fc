"""common/audit/anchor.py: signed log heads, the per-signer store, and the anchor check
(truncation or rewriting of the peer log, detected from the heads recorded in this one)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.audit.anchor import HeadStore, check_anchors, head_problem, log_head, sign_head
from common.audit.keys import fingerprint
from common.audit.log import GENESIS, AuditLog
from common.protocol import ProtocolError, TrainConfig, check_records, encode_train


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_head_signs_seq_and_hash(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl", key)
    assert log.head() == (0, GENESIS)
    empty = log_head(log)
    assert (empty["head_seq"], empty["head_hash"]) == (0, GENESIS)
    e = log.append(run_id="r", peer="p", direction="out", msg_type="train")
    h = log_head(log)
    assert (h["head_seq"], h["head_hash"]) == (1, e.entry_hash) == (1, log.head()[1])
    assert h["head_signer"] == fingerprint(key.public_key())
    assert head_problem(h) is None and head_problem(h, h["head_signer"]) is None
    assert "expected" in str(head_problem(h, "ed25519:" + "0" * 64))
    for field, value in (("head_seq", 2), ("head_hash", GENESIS)):  # the signature binds both
        assert "signature invalid" in str(head_problem({**h, field: value}))
    other = sign_head(Ed25519PrivateKey.generate(), 1, e.entry_hash)
    assert "does not match" in str(head_problem({**other, "head_signer": h["head_signer"]}))


def test_store_refuses_rollback_and_fork(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    store = HeadStore(tmp_path / "heads.json")
    a, b = "a" * 64, "b" * 64
    assert store.admit(sign_head(key, 5, a)) is None
    assert store.admit(sign_head(key, 5, a)) is None  # the same head again is fine
    assert "rolled back: head seq 4 after seq 5" in str(store.admit(sign_head(key, 4, b)))
    assert "forked" in str(store.admit(sign_head(key, 5, b)))
    assert store.admit(sign_head(key, 9, b)) is None
    assert store.admit(sign_head(Ed25519PrivateKey.generate(), 1, a)) is None  # other signer
    assert "signature invalid" in str(store.admit({**sign_head(key, 10, a), "head_seq": 11}))


def test_protocol_validates_the_head_record(key: Ed25519PrivateKey) -> None:
    from flwr.app import ConfigRecord

    rd = encode_train(TrainConfig(run_id="r"))
    rd["head"] = ConfigRecord(sign_head(key, 3, "c" * 64))
    check_records(rd, {"config": "ConfigRecord"}, "coordinator")  # accepted on any message
    rd["head"]["head_seq"] = -1
    with pytest.raises(ProtocolError, match="record 'head': field head_seq"):
        check_records(rd, {"config": "ConfigRecord"}, "coordinator")
    rd["head"] = ConfigRecord({**sign_head(key, 3, "c" * 64), "head_sig": "zz"})
    with pytest.raises(ProtocolError, match="head_sig"):
        check_records(rd, {"config": "ConfigRecord"}, "coordinator")


def _pair(tmp_path: Path, rounds: int = 3) -> tuple[AuditLog, AuditLog]:
    """A coordinator log and a site log exchanging heads: per round the coordinator logs its
    request (with its head before it), the site records that head, logs its reply, and the
    coordinator records the site's head of that reply."""
    c = AuditLog(tmp_path / "coordinator.jsonl", Ed25519PrivateKey.generate())
    s = AuditLog(tmp_path / "egress.jsonl", Ed25519PrivateKey.generate())
    for _ in range(rounds):
        head = log_head(c)
        c.append(run_id="r", peer="node 7", direction="out", msg_type="train", config=head)
        s.append(run_id="r", peer="node 1", direction="in", msg_type="train", config=head)
        sent = s.append(run_id="r", peer="node 1", direction="out", msg_type="train")
        assert c.key is not None and s.key is not None
        c.append(run_id="r", peer="node 7", direction="in", msg_type="train",
                 config=sign_head(s.key, sent.seq, sent.entry_hash))
    return c, s


def _cut(path: Path, keep: int) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:keep]))


def test_intact_pair_passes_both_ways(tmp_path: Path) -> None:
    c, s = _pair(tmp_path)
    at_site = check_anchors(s.path, c.path)
    assert at_site["problems"] == [] and at_site["heads_checked"] == 3
    assert (at_site["peer_entries"], at_site["last_anchored_seq"],
            at_site["unanchored_tail"]) == (6, 4, 2)  # heads 0, 2, 4 of 6 entries
    at_coord = check_anchors(c.path, s.path)
    assert at_coord["problems"] == [] and at_coord["heads_checked"] == 3
    assert (at_coord["last_anchored_seq"], at_coord["unanchored_tail"]) == (6, 0)


def test_truncated_coordinator_log_is_caught_by_the_site(tmp_path: Path) -> None:
    c, s = _pair(tmp_path)
    _cut(c.path, 3)
    problems = check_anchors(s.path, c.path)["problems"]
    assert len(problems) == 1 and problems[0].startswith("TRUNCATED")
    assert "head seq 4" in problems[0] and "only 3 valid entries" in problems[0]
    _cut(c.path, 0)  # emptied: nothing of it is left
    assert any(p.startswith("TRUNCATED") for p in check_anchors(s.path, c.path)["problems"])


def test_truncated_site_log_is_caught_by_the_coordinator(tmp_path: Path) -> None:
    c, s = _pair(tmp_path)
    _cut(s.path, 5)
    problems = check_anchors(c.path, s.path)["problems"]
    assert problems == [p for p in problems if p.startswith("TRUNCATED")] and len(problems) == 1
    assert "head seq 6" in problems[0] and "only 5 valid entries" in problems[0]


def test_tail_after_the_last_head_is_not_anchored(tmp_path: Path) -> None:
    """The stated limit: the coordinator's entries after the last head a site received."""
    c, s = _pair(tmp_path)
    _cut(c.path, 4)
    report = check_anchors(s.path, c.path)
    assert report["problems"] == [] and report["unanchored_tail"] == 0


def test_log_rebuilt_with_the_same_key_is_caught(tmp_path: Path) -> None:
    c, s = _pair(tmp_path)
    c.path.unlink()  # the coordinator re-signs a fresh log of the same length, own key
    fake = AuditLog(c.path, c.key)
    for i in range(6):
        fake.append(run_id="r", peer="node 7", direction="out", msg_type=f"m{i}")
    problems = check_anchors(s.path, c.path)["problems"]
    assert [p.split(":")[0] for p in problems] == ["REWRITTEN", "REWRITTEN"]  # seq 2 and 4


def test_peer_log_of_another_key_anchors_nothing(tmp_path: Path) -> None:
    c, s = _pair(tmp_path)
    stranger = AuditLog(tmp_path / "x.jsonl", Ed25519PrivateKey.generate())
    stranger.append(run_id="r", peer="p", direction="out", msg_type="train")
    problems = check_anchors(s.path, stranger.path)["problems"]
    assert any("holds no head signed by" in p for p in problems)
    assert any("signatures cannot be checked" in p for p in problems)
