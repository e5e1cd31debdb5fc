"""Every request is logged before anything else, including those refused
while decoding (a malformed request, a request that cannot be read, a request holding NaN).

Before: the egress mod logged ``in`` and then let the handler's decoding error propagate with
no ``refused`` entry; a request whose arrays could not be digested, or whose config held NaN,
was not logged at all (digesting or strict JSON raised first)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from common.protocol import ProtocolError


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the Flower runtime sets before it builds any Message in a ClientApp process."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_node_id", 7), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


@pytest.fixture
def context(tmp_path: Path) -> Any:
    from flwr.app import Context, RecordDict

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    node_config = {"data-path": str(tmp_path / "data"), "teacher-dir": str(teacher),
                   "site-name": "site_a", "state-dir": str(tmp_path / "state")}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                   run_config={})


def _entries(context: Any) -> list[dict]:
    path = Path(context.node_config["state-dir"]) / "audit" / "egress.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


def _send(content: Any, mtype: str, context: Any) -> Any:
    from flwr.app import Message

    from site_node.app import app

    return app(Message(content, dst_node_id=7, message_type=mtype), context)


def test_a_request_refused_while_decoding_is_logged(task_identity: None,
                                                     context: Any) -> None:
    from flwr.app import ConfigRecord, RecordDict

    bad = RecordDict({"config": ConfigRecord({"run_id": "r1", "epochs": -5})})
    with pytest.raises(ProtocolError, match="field epochs"):
        _send(bad, "train", context)
    ins, out = _entries(context)
    assert (ins["direction"], ins["decision"], ins["config"]) == (
        "in", "received", {"run_id": "r1", "epochs": -5})
    assert (out["direction"], out["decision"], out["run_id"]) == ("out", "refused", "r1")
    assert out["reason"].startswith("request refused by the handler: ProtocolError: "
                                    "coordinator: record 'config': field epochs")


def test_a_request_with_nan_is_logged_with_null(task_identity: None, context: Any) -> None:
    from flwr.app import ConfigRecord, RecordDict

    bad = RecordDict({"config": ConfigRecord({"run_id": "r1", "epochs": float("nan")})})
    with pytest.raises(ProtocolError):
        _send(bad, "train", context)
    ins, out = _entries(context)
    assert ins["config"]["epochs"] is None and "epochs=nan" in ins["config"]["_nonfinite"]
    assert out["decision"] == "refused"


def test_an_unreadable_request_is_logged_and_refused_before_any_handler(
        task_identity: None, context: Any) -> None:
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

    from site_node.egress import EgressRefused

    junk = Array(dtype="float32", shape=(2,), stype="bogus", data=b"\0" * 8)
    bad = RecordDict({"config": ConfigRecord({"run_id": "r1"}),
                      "arrays": ArrayRecord({"images": junk})})
    with pytest.raises(EgressRefused, match="request unreadable: TypeError"):
        _send(bad, "query.teacher_outputs", context)
    ins, out = _entries(context)
    assert (ins["direction"], ins["config"]) == ("in", {"records": "arrays,config"})
    assert ins["reason"].startswith("request unreadable: TypeError: Unsupported serialization")
    assert out["decision"] == "refused" and out["reason"] == ins["reason"]
