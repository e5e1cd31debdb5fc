"""Site egress policy: teacher outputs pass, anything else (weights, volumes, extras) is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.config import load_config
from common.protocol import NUM_CLASSES, MsgType, reply_schema
from site_node.budget import QueryBudget
from site_node.policy import (
    ArrayRule,
    EgressPolicy,
    ReplyRule,
    check_reply,
    default_policy,
    format_policy,
)

ROOT = Path(__file__).resolve().parents[2]
Q = str(MsgType.QUERY)
N, S = 16, 96
ECHO = {"site_name": "site_a", "run_id": "r1", "chunk": 0, "n": N}


def valid_reply(n: int = N, s: int = S) -> dict[str, np.ndarray]:
    """Arrays exactly as ``common.protocol.reply_schema`` describes them."""
    return {k: np.zeros(shape, dtype) for k, (dtype, shape) in reply_schema(n, s).items()}


def check(arrays: dict[str, np.ndarray], msg: str = Q, metrics: dict | None = None,
          n: int | None = N, s: int | None = S) -> tuple[bool, str | None]:
    d = check_reply(default_policy(), msg, arrays, ECHO if metrics is None else metrics, n, s)
    return d.allowed, d.reason


def test_valid_query_reply_allowed() -> None:
    assert check(valid_reply()) == (True, None)
    assert NUM_CLASSES == 2


@pytest.mark.parametrize("mutate, why", [
    (lambda a: a.update(weights=np.zeros(10, np.float32)), "array 'weights' not allowed"),
    (lambda a: a.update(logits=a["logits"].astype(np.float32)), "dtype float32 not allowed"),
    (lambda a: a.update(at_deep=np.zeros((N, S // 4, S // 4), np.float16)), "shape"),
    (lambda a: a.update(at_early=np.zeros((24, 96, 96), np.float16)), "shape (24, 96, 96)"),
])
def test_bad_query_replies_refused(mutate, why) -> None:  # type: ignore[no-untyped-def]
    arrays = valid_reply()
    mutate(arrays)
    ok, reason = check(arrays)
    assert not ok and why in str(reason)


def test_volume_sized_array_refused_by_budget() -> None:
    loose = EgressPolicy(replies={Q: ReplyRule(
        arrays={"logits": ArrayRule(dtypes=["float32"], shape=[24, 96, 96])},
        max_reply_bytes=100_000)})
    d = check_reply(loose, Q, {"logits": np.zeros((24, 96, 96), np.float32)}, {}, N, S)
    assert not d.allowed and "budget" in str(d.reason)


def test_train_and_evaluate_replies_metrics_only() -> None:
    train = {"val_dice": 0.8, "case_count": 12, "site_name": "site_a"}
    assert check({}, "train", train) == (True, None)
    ok, why = check({"conv1.weight": np.zeros((8, 1, 3, 3), np.float32)}, "train", train)
    assert not ok and "may not carry arrays" in str(why)
    assert not check({}, "train", {**train, "hist": [1, 2]})[0]
    assert not check({}, "train", {**train, "secret": 1.0})[0]
    assert check({}, "evaluate", {"dice_mean": 0.7, "n": 5.0, "site_name": "a"})[0]
    assert not check({"x": np.zeros(1, np.float32)}, "evaluate", {})[0]
    assert not check({}, "unknown", {})[0]


def test_request_bounds() -> None:
    assert not check(valid_reply(300), n=300)[0]
    assert not check(valid_reply(s=512), s=512)[0]
    assert not check(valid_reply(), n=None)[0]  # a query reply needs the request's N


def test_query_budget(tmp_path: Path) -> None:
    pol = default_policy().model_copy(update={"max_queries_per_run": 3,
                                              "max_slices_per_run": 40})
    budget = QueryBudget(tmp_path / "budget.json", pol)
    small = budget.admit_query("r1", 4)
    assert not small.allowed and "min_query_batch" in str(small.reason)
    assert budget.admit_query("r1", 16).allowed and budget.admit_query("r1", 16).allowed
    over = QueryBudget(tmp_path / "budget.json", pol).admit_query("r1", 16)  # state persisted
    assert not over.allowed and "max_slices_per_run" in str(over.reason)
    assert budget.admit_query("r1", 8).allowed
    assert "max_queries_per_run" in str(budget.admit_query("r1", 8).reason)
    assert budget.usage("r1") == {"queries": 3, "slices": 40}
    assert budget.admit_query("r2", 8).allowed


def test_example_toml_equals_default() -> None:
    pol = load_config(ROOT / "deploy" / "egress-policy.toml", EgressPolicy)
    assert pol == default_policy()
    text = format_policy(pol)
    assert "NONE (any array is refused)" in text and "logits" in text and "side/8" in text
