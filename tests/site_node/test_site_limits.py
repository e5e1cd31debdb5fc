"""The site's limits hold before the work: the whole request against the policy, budgets per
coordinator across runs and restarts, replay protection and the pinned coordinator key, and a
signed trace of every refusal (unknown message types, an unreadable policy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.protocol import (
    Key,
    QueryConfig,
    TrainConfig,
    TrainReply,
    encode_query,
    encode_train,
    encode_train_reply,
    slice_hash,
)
from coordinator.audit_trail import CoordinatorTrail
from site_node.budget import UNPINNED, QueryBudget, budget_lines
from site_node.egress import EgressGate, EgressRefused, RequestInfo
from site_node.policy import CoordinatorBudgetPolicy, default_policy
from tests._helpers import random_targets, read_jsonl

N, S = 8, 32


def _query(run: str = "r1", n: int = N, side: int = S, seed: int = 0) -> object:
    images = np.random.default_rng(seed).random((n, 1, side, side), dtype=np.float32)
    cfg = QueryConfig(run_id=run, chunk=0, n_chunks=1, size=side,
                      slice_hashes=[slice_hash(im) for im in images])
    return encode_query(images, np.zeros((n, side, side), np.uint8), cfg)


class _Teacher:
    """A compute callback that counts its calls (the teacher's work)."""

    def __init__(self, side: int = S) -> None:
        self.calls, self.side = 0, side

    def __call__(self) -> object:
        from common.protocol import encode_teacher_reply

        self.calls += 1
        cfg = QueryConfig(run_id="r1", chunk=0, n_chunks=1, size=self.side, slice_hashes=[])
        return encode_teacher_reply("site_a", cfg, random_targets(N, self.side))


def _ask(gate: EgressGate, request: object, run: str = "r1", side: int = S,
         teacher: _Teacher | None = None) -> None:
    gate.respond(RequestInfo("query.teacher_outputs", run, "node 1", N, side), request,
                 teacher or _Teacher(side))


def test_a_side_over_the_policy_is_refused_before_the_teacher_runs(tmp_path: Path) -> None:
    gate, teacher = EgressGate(tmp_path), _Teacher(512)
    with pytest.raises(EgressRefused, match="request side 512 outside 1..384"):
        _ask(gate, _query(side=512), side=512, teacher=teacher)
    assert teacher.calls == 0
    assert [e["decision"] for e in read_jsonl(gate.log.path)] == ["received", "refused"]


def test_request_arrays_must_match_the_declared_query(tmp_path: Path) -> None:
    from flwr.app import Array

    gate, teacher = EgressGate(tmp_path), _Teacher()
    request = _query()
    request[Key.ARRAYS]["extra"] = Array(np.zeros(3, np.float64))  # type: ignore[index]
    with pytest.raises(EgressRefused, match="request arrays"):
        _ask(gate, request, teacher=teacher)
    assert teacher.calls == 0


def test_the_wire_schema_is_no_looser_than_the_policy_caps() -> None:
    from pydantic import ValidationError

    from common.protocol.messages import MAX_QUERY_SIDE, MAX_QUERY_SLICES
    from site_node.policy import EgressPolicy

    assert (MAX_QUERY_SIDE, MAX_QUERY_SLICES) == (512, 1024)
    with pytest.raises(ValidationError):
        QueryConfig(run_id="r", chunk=0, n_chunks=1, size=1024, slice_hashes=[])
    with pytest.raises(ValidationError):
        EgressPolicy.model_validate({**default_policy().model_dump(), "max_side": 1024})


def test_budgets_hold_across_run_ids_and_restarts(tmp_path: Path) -> None:
    policy = default_policy().model_copy(update={
        "max_queries_per_run": 2,
        "coordinator_budget": CoordinatorBudgetPolicy(max_queries=3, window_hours=0)})
    teacher = _Teacher()
    _ask(EgressGate(tmp_path, policy=policy), _query("b1", seed=1), "b1", teacher=teacher)
    _ask(EgressGate(tmp_path, policy=policy), _query("b2", seed=2), "b2", teacher=teacher)
    _ask(EgressGate(tmp_path, policy=policy), _query("b3", seed=3), "b3", teacher=teacher)
    with pytest.raises(EgressRefused, match=r"already made 3 queries over the site's lifetime"):
        _ask(EgressGate(tmp_path, policy=policy), _query("b4", seed=4), "b4", teacher=teacher)
    assert teacher.calls == 3
    lines = budget_lines(tmp_path, policy)
    assert f"  {UNPINNED}: 3 queries, {3 * N} slices" in lines[1]


def test_the_rolling_window_frees_the_budget_after_it_passes(tmp_path: Path) -> None:
    policy = default_policy().model_copy(update={"coordinator_budget": CoordinatorBudgetPolicy(
        max_queries=10, max_slices=2 * N, window_hours=2)})
    now = [1_000_000 * 3600.0]
    budget = QueryBudget(tmp_path / "b.json", policy, clock=lambda: now[0])
    assert budget.admit_query("r1", N, "c").allowed and budget.admit_query("r2", N, "c").allowed
    refused = budget.admit_query("r3", N, "c")
    assert not refused.allowed and "would reach 24 slices in 2 h" in str(refused.reason)
    assert budget.admit_query("r3", N, "other").allowed  # another identity: its own budget
    now[0] += 3600.0
    assert not budget.admit_query("r4", N, "c").allowed  # both charges still in the window
    now[0] += 3600.0
    assert budget.admit_query("r4", N, "c").allowed  # the first hour left the window
    assert budget.window_usage("c") == (1, N)


def _train_round(trail: CoordinatorTrail, gate: EgressGate, request: object) -> object:
    return gate.respond(RequestInfo("train", "r1", "node 1"), request,
                        lambda: encode_train_reply("site_a", TrainReply(val_dice=0.5,
                                                                        case_count=3)))


def test_a_replayed_head_or_request_is_refused(tmp_path: Path) -> None:
    trail, gate = CoordinatorTrail(tmp_path / "out", "r1"), EgressGate(tmp_path / "site")
    request = encode_train(TrainConfig(run_id="r1"))
    trail.sent(7, "train", request)
    _train_round(trail, gate, request)
    with pytest.raises(EgressRefused, match="head seq 0 not after seq 0"):
        _train_round(trail, gate, request)  # the same signed head and request again
    unsigned = _query(seed=5)
    _ask(gate, unsigned)
    with pytest.raises(EgressRefused, match="replayed request"):
        _ask(gate, unsigned)  # no head (not required without a pinned key): answered once
    assert read_jsonl(gate.log.path)[-1]["decision"] == "refused"


def test_a_pinned_coordinator_key_refuses_other_signers_and_headless_requests(
        tmp_path: Path) -> None:
    trail = CoordinatorTrail(tmp_path / "out", "r1")
    pub = tmp_path / "out" / "audit" / "coordinator.pub"
    gate = EgressGate(tmp_path / "site", pinned=pub)
    request = encode_train(TrainConfig(run_id="r1"))
    trail.sent(7, "train", request)
    _train_round(trail, gate, request)  # the pinned coordinator is answered
    stranger = CoordinatorTrail(tmp_path / "other", "r1")
    request = encode_train(TrainConfig(run_id="r1"))
    stranger.sent(7, "train", request)
    with pytest.raises(EgressRefused, match="unknown coordinator key"):
        _train_round(stranger, gate, request)
    with pytest.raises(EgressRefused, match="no signed coordinator log head"):
        _ask(gate, _query())
    assert gate.replay.identity.startswith("ed25519:")


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_node_id", 7), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _context(tmp_path: Path, **extra: str) -> object:
    from flwr.app import Context, RecordDict

    node_config = {"data-path": str(tmp_path / "data"), "teacher-dir": str(tmp_path / "t"),
                   "site-name": "site_a", "state-dir": str(tmp_path / "state"), **extra}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                   run_config={})


def test_an_unknown_message_type_leaves_a_signed_refusal(task_identity: None,
                                                         tmp_path: Path) -> None:
    from flwr.app import Message

    from common.audit.log import verify_log
    from site_node.app import app

    msg = Message(_query(), dst_node_id=7, message_type="query.steal")
    with pytest.raises(EgressRefused, match="query.steal: unknown message type"):
        app(msg, _context(tmp_path))  # type: ignore[arg-type]
    log = tmp_path / "state" / "audit" / "egress.jsonl"
    entries = read_jsonl(log)
    assert [(e["msg_type"], e["decision"]) for e in entries] == [
        ("query.steal", "received"), ("query.steal", "refused")]
    assert verify_log(log, None).ok and entries[1]["signature"]


def test_an_unreadable_policy_refuses_every_request_with_a_signed_reason(
        task_identity: None, tmp_path: Path) -> None:
    from flwr.app import Message

    from site_node.app import app

    bad = tmp_path / "policy.toml"
    bad.write_text("max_side = [unclosed\n")
    msg = Message(encode_train(TrainConfig(run_id="r1")), dst_node_id=7, message_type="train")
    with pytest.raises(EgressRefused, match="policy.toml unusable"):
        app(msg, _context(tmp_path, **{"policy-path": str(bad)}))  # type: ignore[arg-type]
    entries = read_jsonl(tmp_path / "state" / "audit" / "egress.jsonl")
    assert [e["decision"] for e in entries] == ["received", "refused"]
    assert "unusable" in entries[1]["reason"]


def test_status_shows_the_coordinator_budget(tmp_path: Path) -> None:
    from site_node.status import status_lines

    _ask(EgressGate(tmp_path / "state"), _query())
    text = "\n".join(status_lines(tmp_path / "state", tmp_path / "t", None))
    assert f"{UNPINNED}: 1 queries, {N} slices" in text
    assert json.loads((tmp_path / "state" / "query_budget.json").read_text())["runs"]["r1"] == {
        "queries": 1, "slices": N}


def test_keys_pin_installs_the_coordinator_key_and_run_passes_it(
        tiny_sites: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shlex

    from site_node.cli import main as site_main

    CoordinatorTrail(tmp_path / "out", "r1")  # makes the coordinator's audit key pair
    pub = tmp_path / "out" / "audit" / "coordinator.pub"
    keys = tmp_path / "keys"
    assert site_main(["keys", "pin", "--dir", str(keys), "--coordinator-pub", str(pub)]) == 0
    assert "pinned" in capsys.readouterr().out
    installed = keys / "coordinator.pub"
    assert installed.read_bytes() == pub.read_bytes()
    assert site_main(["--data", str(tiny_sites["site_a"]), "--coordinator", "127.0.0.1:8000",
                      "--name", "site_a", "--insecure", "--dry-run", "--state-dir",
                      str(tmp_path / "state"), "--coordinator-key", str(installed)]) == 0
    cmd = shlex.split(next(ln for ln in capsys.readouterr().out.splitlines()
                           if "flower-supernode" in ln))
    assert f'coordinator-key="{installed}"' in cmd[cmd.index("--node-config") + 1]
    private = tmp_path / "out" / "audit" / "coordinator.key"
    assert site_main(["keys", "pin", "--dir", str(keys), "--coordinator-pub",
                      str(private)]) == 2  # a private key is not what to pin: one line
    assert "not a PEM public key" in capsys.readouterr().err
