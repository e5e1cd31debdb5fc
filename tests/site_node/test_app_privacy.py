"""The site's egress gate at the handler level: log in, admit, check, refuse or sign."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.audit.entries import receipt_problem
from common.audit.keys import load_public_key
from common.audit.log import verify_log
from common.protocol import (
    Key,
    QueryConfig,
    TrainConfig,
    TrainReply,
    decode_teacher_reply,
    encode_query,
    encode_teacher_reply,
    encode_train,
    encode_train_reply,
    slice_hash,
)
from common.records import record_contents
from site_node.egress import EgressGate, EgressRefused, RequestInfo
from tests._helpers import random_targets, read_jsonl

N, S = 8, 32


def _entries(gate: EgressGate) -> list[dict]:
    return read_jsonl(gate.log.path)


def _query(n: int = N, seed: int = 0) -> tuple[QueryConfig, object]:
    images = np.random.default_rng(seed).random((n, 1, S, S), dtype=np.float32)
    cfg = QueryConfig(run_id="r1", chunk=0, n_chunks=1, size=S,
                      slice_hashes=[slice_hash(im) for im in images])
    return cfg, encode_query(images, np.zeros((n, S, S), np.uint8), cfg)


def test_key_is_generated_private_and_reused(tmp_path: Path) -> None:
    gate = EgressGate(tmp_path / "state")
    key = tmp_path / "state" / "audit" / "site.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.with_suffix(".pub").exists()
    again = EgressGate.from_node_config({"state-dir": str(tmp_path / "state")}, tmp_path)
    assert again.log.signer == gate.log.signer


def test_train_reply_with_weights_is_refused_and_logged(tmp_path: Path) -> None:
    from flwr.app import Array, ArrayRecord

    gate = EgressGate(tmp_path)
    req = RequestInfo("train", "r1", "node 0")

    def leaky():  # type: ignore[no-untyped-def]
        rd = encode_train_reply("site_a", TrainReply(val_dice=0.8, case_count=12))
        rd["weights"] = ArrayRecord({"conv1.weight": Array(np.ones((16, 1, 3, 3), np.float32))})
        return rd

    with pytest.raises(EgressRefused, match="train reply may not carry arrays"):
        gate.respond(req, encode_train(TrainConfig(run_id="r1")), leaky)
    ins, out = _entries(gate)
    assert ins["direction"] == "in" and ins["decision"] == "received"
    assert out["decision"] == "refused" and "may not carry arrays" in out["reason"]
    assert out["arrays"][0]["name"] == "conv1.weight"  # the refused payload is on record
    assert verify_log(gate.log.path, load_public_key(tmp_path / "audit" / "site.pub")).ok


def test_oversize_array_in_a_query_reply_is_refused(tmp_path: Path) -> None:
    gate = EgressGate(tmp_path)
    cfg, request = _query()
    req = RequestInfo("query.teacher_outputs", "r1", "node 0", N, S)
    big = cfg.model_copy(update={"size": 64})  # a reply at the private volume's resolution

    with pytest.raises(EgressRefused, match="array 'logits': shape"):
        gate.respond(req, request, lambda: encode_teacher_reply("site_a", big,
                                                                random_targets(N, 64)))
    assert _entries(gate)[-1]["decision"] == "refused"


def test_good_query_reply_is_sent_with_a_verifiable_receipt(tmp_path: Path) -> None:
    gate = EgressGate(tmp_path)
    cfg, request = _query()
    req = RequestInfo("query.teacher_outputs", "r1", "node 0", N, S)
    reply = gate.respond(req, request, lambda: encode_teacher_reply(
        "site_a", cfg, random_targets(N, S)))
    assert _entries(gate)[-1]["decision"] == "sent"
    receipt = dict(reply[Key.RECEIPT])
    site, _ = decode_teacher_reply(reply, N, S, "node 1", chunk=0)  # receipt record accepted
    arrays, _ = record_contents(reply, skip=(str(Key.RECEIPT),))
    pub = load_public_key(tmp_path / "audit" / "site.pub")
    assert site == "site_a" and receipt_problem(receipt, arrays, pub) is None
    arrays["logits"] = arrays["logits"].copy()
    arrays["logits"][0, 0, 0, 0] += 1
    assert receipt_problem(receipt, arrays, pub) is not None


def test_small_or_over_budget_queries_are_refused_before_compute(tmp_path: Path) -> None:
    from site_node.policy import default_policy

    policy = default_policy().model_copy(update={"max_queries_per_run": 1})
    gate = EgressGate(tmp_path, policy=policy)
    calls: list[int] = []

    def compute():  # type: ignore[no-untyped-def]
        calls.append(1)
        return encode_teacher_reply("site_a", cfg, random_targets(N, S))

    cfg, request = _query(4)
    with pytest.raises(EgressRefused, match="min_query_batch"):
        gate.respond(RequestInfo("query.teacher_outputs", "r1", "c", 4, S), request, compute)
    cfg, request = _query()
    gate.respond(RequestInfo("query.teacher_outputs", "r1", "c", N, S), request, compute)
    cfg, request = _query(N, seed=1)  # another request (the same one again is a replay)
    with pytest.raises(EgressRefused, match="max_queries_per_run"):
        gate.respond(RequestInfo("query.teacher_outputs", "r1", "c", N, S), request, compute)
    assert len(calls) == 1
    assert [e["decision"] for e in _entries(gate)].count("refused") == 2


@pytest.mark.parametrize("mode", ["int8_probs", "downsample"])
def test_compressed_replies_pass_the_gate_and_decode(tmp_path: Path, mode: str) -> None:
    from site_node.egress import codec_from_node_config

    codec = codec_from_node_config({"compression": mode})
    gate = EgressGate(tmp_path)
    cfg, request = _query()
    t = random_targets(N, S)
    reply = gate.respond(RequestInfo("query.teacher_outputs", "r1", "c", N, S), request,
                         lambda: encode_teacher_reply("site_a", cfg, t, codec))
    arrays, _ = record_contents(reply, skip=(str(Key.RECEIPT),))
    assert "logits" not in arrays and len(arrays) == 5
    _, back = decode_teacher_reply(reply, N, S, "node 1", chunk=0)
    probs = torch.softmax(back.logits[0], 1)[:, 1]
    ref = torch.softmax(t.logits[0], 1)[:, 1]
    assert back.logits.shape == (1, N, 2, S, S)
    assert float((probs - ref).abs().mean()) < (0.01 if mode == "int8_probs" else 0.35)


def test_coordinator_verifies_receipts_and_audits(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    import shutil

    from common.audit.cli import add_audit_args
    from coordinator.audit_trail import CoordinatorTrail, run_coordinator_audit

    gate = EgressGate(tmp_path / "site")
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(tmp_path / "site" / "audit" / "site.pub", keys / "site_a.pub")
    trail = CoordinatorTrail(tmp_path / "out", "r1", keys)
    cfg, request = _query()
    trail.sent(7, "query.teacher_outputs", request)
    reply = gate.respond(RequestInfo("query.teacher_outputs", "r1", "c", N, S), request,
                         lambda: encode_teacher_reply("site_a", cfg, random_targets(N, S)))
    content, why = trail.received(7, "query.teacher_outputs", reply)
    assert why is None and Key.RECEIPT not in content.keys()
    reply[Key.CONFIG]["chunk"] = 3  # tampered scalar
    assert "scalars" in str(trail.received(7, "query.teacher_outputs", reply)[1])
    other = CoordinatorTrail(tmp_path / "out2", "r2", keys)  # replay into another run
    reply[Key.CONFIG]["chunk"] = 0
    assert "replay" in str(other.received(7, "query.teacher_outputs", reply)[1])
    p = argparse.ArgumentParser()
    add_audit_args(p)
    log = tmp_path / "out" / "audit"
    assert run_coordinator_audit(p.parse_args(["--log", str(log / "coordinator.jsonl"), "--pub",
                                               str(log / "coordinator.pub")])) == 0
    assert "1 replies accepted (1 with a verified site receipt), 1 rejected" in (
        capsys.readouterr().out)


def test_codec_quantises_at_the_query_temperature_unless_the_site_overrides() -> None:
    from site_node.egress import codec_from_node_config

    assert codec_from_node_config({"compression": "int8_probs"}, 4.0).temperature == 4.0
    assert codec_from_node_config({"compression": "int8_probs"}).temperature == 1.0
    pinned = codec_from_node_config({"compression": "int8_probs", "temperature": "2"}, 4.0)
    assert pinned.temperature == 2.0
