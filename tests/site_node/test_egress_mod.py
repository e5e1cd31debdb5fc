"""The egress gate is a mod of the whole ClientApp: handlers, present or future, are gated.

The ClientApp is called directly (no Flower runtime): messages are created with the runtime's
task identity set by hand, as the SuperNode would have it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from common.protocol import Key, QueryConfig, TrainConfig, encode_query, encode_train, slice_hash

N, S = 8, 32


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the Flower runtime sets before it builds any Message in a ClientApp process."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_node_id", 7), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """A site whose teacher is 'trained' (card, split, checkpoint file): ``train`` reuses it."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "best.pt").write_bytes(b"not read by handle_train")
    (teacher / "teacher.json").write_text(json.dumps({"val_dice": 0.75}))
    (teacher / "split.json").write_text(json.dumps({"train": ["a", "b"], "val": ["c"],
                                                    "test": ["d"]}))
    from site_node.membership import Fingerprints, card_digest  # no private slice to screen

    Fingerprints(card_digest(teacher), 16, frozenset(), np.zeros((0, 256), np.float32)).save(
        teacher / "membership.npz")
    return {"data": tmp_path / "data", "teacher": teacher, "state": tmp_path / "state"}


@pytest.fixture
def registered() -> Iterator[Callable[[str, str], Callable]]:
    """Register handlers on the REAL ``site_node.app.app``, as a future developer would; they
    are unregistered afterwards."""
    from site_node.app import app

    names: list[str] = []

    def register(category: str, action: str) -> Callable:
        names.append(f"{category}.{action}")
        return getattr(app, category)(action)  # type: ignore[no-any-return]

    yield register
    for name in names:
        app._registered_funcs.pop(name, None)


def _context(site: dict[str, Path]):  # type: ignore[no-untyped-def]
    from flwr.app import Context, RecordDict

    node_config = {"data-path": str(site["data"]), "teacher-dir": str(site["teacher"]),
                   "site-name": "site_a", "state-dir": str(site["state"])}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                   run_config={})


def _entries(site: dict[str, Path]) -> list[dict]:
    path = site["state"] / "audit" / "egress.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


def _query_content(n: int = N):  # type: ignore[no-untyped-def]
    images = np.random.default_rng(0).random((n, 1, S, S), dtype=np.float32)
    cfg = QueryConfig(run_id="r1", chunk=0, n_chunks=1, size=S,
                      slice_hashes=[slice_hash(im) for im in images])
    return encode_query(images, np.zeros((n, S, S), np.uint8), cfg)


def test_a_new_handler_leaking_an_array_is_refused_and_logged(
        task_identity: None, site: dict[str, Path], registered: Callable) -> None:
    from flwr.app import Array, ArrayRecord, Message, RecordDict

    from site_node.app import app
    from site_node.egress import EgressRefused

    calls: list[str] = []

    @registered("query", "probe")
    def probe(msg: Message, context: object) -> Message:  # no egress code at all
        calls.append(msg.metadata.message_type)
        leak = ArrayRecord({"conv1.weight": Array(np.ones((16, 1, 3, 3), np.float32))})
        return Message(RecordDict({"weights": leak}), reply_to=msg)

    msg = Message(_query_content(), dst_node_id=7, message_type="query.probe")
    with pytest.raises(EgressRefused, match="query.probe: no egress rule"):
        app(msg, _context(site))
    assert calls == []  # refused on the request, before the handler ran
    ins, out = _entries(site)
    assert (ins["direction"], ins["decision"], ins["msg_type"]) == ("in", "received",
                                                                      "query.probe")
    assert ins["run_id"] == "r1" and ins["peer"] == "node 7"
    assert out["decision"] == "refused" and not out["arrays"]


def test_a_new_query_handler_is_charged_to_the_budget_before_it_runs(
        task_identity: None, site: dict[str, Path], registered: Callable) -> None:
    from flwr.app import ConfigRecord, Message, RecordDict

    from site_node.app import app
    from site_node.egress import EgressRefused

    calls: list[int] = []

    @registered("query", "undeclared")
    def undeclared(msg: Message, context: object) -> Message:
        calls.append(1)
        return Message(RecordDict({}), reply_to=msg)

    content = RecordDict({"config": ConfigRecord({"run_id": "r2"})})  # no slice_hashes: n = 0
    with pytest.raises(EgressRefused, match="query.undeclared: no egress rule"):
        app(Message(content, dst_node_id=7, message_type="query.undeclared"), _context(site))
    assert calls == []
    assert [e["decision"] for e in _entries(site)] == ["received", "refused"]


def test_the_train_handler_reply_is_sealed_by_the_mod(task_identity: None,
                                                      site: dict[str, Path]) -> None:
    from flwr.app import Message

    from common.audit.entries import receipt_problem
    from common.audit.keys import load_public_key
    from common.protocol import decode_train_reply
    from common.records import record_contents
    from site_node.app import app

    msg = Message(encode_train(TrainConfig(run_id="r3")), dst_node_id=7, message_type="train")
    reply = app(msg, _context(site))
    name, rep = decode_train_reply(reply.content, "node 7")
    assert name == "site_a" and rep.val_dice == 0.75 and rep.case_count == 4
    assert [e["decision"] for e in _entries(site)] == ["received", "sent"]
    arrays, _ = record_contents(reply.content, skip=(str(Key.RECEIPT),))
    pub = load_public_key(site["state"] / "audit" / "site.pub")
    assert arrays == {}
    assert receipt_problem(dict(reply.content[Key.RECEIPT]), arrays, pub) is None


def test_every_registered_handler_is_wrapped_by_the_egress_mod() -> None:
    from site_node.app import app
    from site_node.egress import egress_mod

    assert app._mods == [egress_mod]
    assert set(app._registered_funcs) == {"train.default", "query.teacher_outputs",
                                          "evaluate.default", "query.fedavg_train"}
