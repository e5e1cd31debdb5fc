"""Both logs are anchored. Through the real egress gate and coordinator trail,
each request carries the coordinator's signed head (the site records it) and each reply the
site's (the coordinator records it); `site-node audit` / `coordinator audit` given the other
side's log then catch a truncation of either one; forged or rolled-back heads are refused."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from common.audit.anchor import sign_head
from common.audit.cli import add_audit_args
from common.protocol import Key, TrainConfig, TrainReply, encode_train, encode_train_reply
from coordinator.audit_trail import CoordinatorTrail, run_coordinator_audit
from site_node.cli import main as site_main
from site_node.egress import EgressGate, EgressRefused, RequestInfo
from tests._helpers import read_jsonl

ROUNDS = 3


def _round(trail: CoordinatorTrail, gate: EgressGate) -> str | None:
    request = encode_train(TrainConfig(run_id="r1"))
    trail.sent(7, "train", request)
    reply = gate.respond(RequestInfo("train", "r1", "node 1"), request,
                         lambda: encode_train_reply("site_a", TrainReply(val_dice=0.5,
                                                                         case_count=3)))
    return trail.received(7, "train", reply)[1]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[CoordinatorTrail, EgressGate]:
    gate = EgressGate(tmp_path / "site")
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(tmp_path / "site" / "audit" / "site.pub", keys / "site_a.pub")
    trail = CoordinatorTrail(tmp_path / "out", "r1", keys)
    for _ in range(ROUNDS):
        assert _round(trail, gate) is None
    return trail, gate


def _coordinator_audit(trail: CoordinatorTrail, gate: EgressGate) -> int:
    p = argparse.ArgumentParser()
    add_audit_args(p)
    folder = trail.log.path.parent
    return run_coordinator_audit(p.parse_args([
        "--log", str(trail.log.path), "--pub", str(folder / "coordinator.pub"),
        "--peer-log", str(gate.log.path), "--peer-pub", str(gate.key_path.with_suffix(".pub"))]))


def _site_audit(trail: CoordinatorTrail, gate: EgressGate) -> int:
    return site_main(["audit", "--log", str(gate.log.path), "--pub",
                      str(gate.key_path.with_suffix(".pub")), "--peer-log", str(trail.log.path)])


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:keep]))


def test_each_side_records_the_others_heads(pair: tuple[CoordinatorTrail, EgressGate]) -> None:
    trail, gate = pair
    site, coord = read_jsonl(gate.log.path), read_jsonl(trail.log.path)
    assert len(site) == len(coord) == 2 * ROUNDS
    # the site's request entries hold the coordinator's head before each request: 0, 2, 4
    assert [e["config"]["head_seq"] for e in site if e["direction"] == "in"] == [0, 2, 4]
    assert [e["config"]["head_hash"] for e in site if e["direction"] == "in"][1:] == [
        coord[1]["entry_hash"], coord[3]["entry_hash"]]
    # the coordinator's reply entries hold the site's head of each reply: 2, 4, 6
    got = [(e["config"]["head_seq"], e["config"]["head_hash"]) for e in coord
           if e["direction"] == "in"]
    assert got == [(2, site[1]["entry_hash"]), (4, site[3]["entry_hash"]),
                   (6, site[5]["entry_hash"])]


def test_untruncated_pair_passes(pair: tuple[CoordinatorTrail, EgressGate],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    trail, gate = pair
    assert _site_audit(trail, gate) == 0
    out = capsys.readouterr().out
    assert "anchors: 3 head(s)" in out and "last anchored seq 4 (2 later entries" in out
    assert _coordinator_audit(trail, gate) == 0
    assert "last anchored seq 6 (0 later entries" in capsys.readouterr().out


def test_truncated_coordinator_log_fails_the_site_audit(
        pair: tuple[CoordinatorTrail, EgressGate], capsys: pytest.CaptureFixture[str]) -> None:
    trail, gate = pair
    _cut(trail.log.path, 3)  # drops the entry of seq 4 the site holds a head of
    assert _site_audit(trail, gate) == 1
    out = capsys.readouterr().out
    assert "ANCHOR: TRUNCATED" in out and "STATEMENT WITHHELD" in out
    assert "No array other than teacher outputs" not in out


def test_truncated_site_log_fails_the_coordinator_audit(
        pair: tuple[CoordinatorTrail, EgressGate], capsys: pytest.CaptureFixture[str]) -> None:
    trail, gate = pair
    _cut(gate.log.path, 5)  # the site hides its last reply
    assert _coordinator_audit(trail, gate) == 1
    out = capsys.readouterr().out
    assert "ANCHOR: TRUNCATED" in out and "head seq 6" in out and "STATEMENT WITHHELD" in out


def test_forged_or_rolled_back_coordinator_head_is_refused(
        pair: tuple[CoordinatorTrail, EgressGate], capsys: pytest.CaptureFixture[str]) -> None:
    from flwr.app import ConfigRecord

    trail, gate = pair
    request = encode_train(TrainConfig(run_id="r1"))
    trail.sent(7, "train", request)
    good = dict(request[Key.HEAD])
    forged = {**good, "head_seq": good["head_seq"] + 10}  # signature no longer matches
    calls: list[int] = []

    def compute():  # type: ignore[no-untyped-def]
        calls.append(1)
        return encode_train_reply("site_a", TrainReply(val_dice=0.5, case_count=3))

    for head, why in ((forged, "signature invalid"),
                      (sign_head(trail.log.key, 2, read_jsonl(trail.log.path)[1]["entry_hash"]),
                       "head seq 2 not after seq 4")):
        request[Key.HEAD] = ConfigRecord(head)
        with pytest.raises(EgressRefused, match=why):
            gate.respond(RequestInfo("train", "r1", "node 1"), request, compute)
        assert read_jsonl(gate.log.path)[-1]["decision"] == "refused"
    assert calls == []  # refused before the handler ran
    # the forged head recorded with the refused request anchors nothing and fails nothing
    assert _site_audit(trail, gate) == 0
    assert "ignored head:" in capsys.readouterr().out


def test_forged_site_head_is_refused_by_the_coordinator(
        pair: tuple[CoordinatorTrail, EgressGate]) -> None:
    from flwr.app import ConfigRecord

    trail, gate = pair
    request = encode_train(TrainConfig(run_id="r1"))
    trail.sent(7, "train", request)
    reply = gate.respond(RequestInfo("train", "r1", "node 1"), request,
                         lambda: encode_train_reply("site_a", TrainReply(val_dice=0.5,
                                                                         case_count=3)))
    head = dict(reply[Key.HEAD])
    reply[Key.HEAD] = ConfigRecord({**head, "head_sig": "0" * 128})
    assert "signature invalid" in str(trail.received(7, "train", reply)[1])
    reply[Key.HEAD] = ConfigRecord({**head})
    del reply[Key.HEAD]
    assert "no signed log head" in str(trail.received(7, "train", reply)[1])
    entry = read_jsonl(trail.log.path)[-1]
    assert entry["decision"] == "refused" and "head_seq" not in entry["config"]
