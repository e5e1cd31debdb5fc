"""One undefined metric (HD95 = NaN) no longer breaks the reply or the log.

Before: ``EvalReply`` carried NaN, the egress policy refused the reply ("non-finite value") and
logging that refusal raised (the log is strict JSON), so the site answered with an error."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from common.audit.entries import NONFINITE_KEY
from common.audit.log import AuditLog, verify_log
from common.protocol import (
    EvalReply,
    Key,
    ProtocolError,
    TrainReply,
    decode_eval_reply,
    decode_train_reply,
    encode_eval_reply,
    encode_train_reply,
)
from common.records import record_contents
from site_node.policy import check_reply, default_policy

SUMMARY = {"dice_mean": 0.0, "dice_std": 0.0, "voe_mean": 1.0, "voe_std": 0.0,
           "hd95_mean": math.nan, "hd95_std": math.nan, "hd95_undefined": 3.0, "n": 3.0}


def test_undefined_metrics_travel_as_null_with_a_reason() -> None:
    rep = EvalReply(**SUMMARY)  # what summarise() gives when every prediction is empty
    assert rep.hd95_mean is None and rep.hd95_std is None and rep.dice_mean == 0.0
    why = "HD95 undefined in 3 of 3 test cases (empty prediction or ground truth)"
    assert rep.undefined == {"hd95_mean": why, "hd95_std": why}
    rd = encode_eval_reply("site_a", rep)
    assert "hd95_mean" not in dict(rd[Key.METRICS]) and dict(rd[Key.UNDEFINED])["hd95_mean"] == why
    site, back = decode_eval_reply(rd, "node 1")
    assert site == "site_a" and back == rep
    assert math.isnan(back.summary()["hd95_mean"]) and back.summary()["dice_mean"] == 0.0
    empty = EvalReply(**{**SUMMARY, "dice_mean": math.nan, "n": 0.0, "hd95_undefined": 0.0})
    assert empty.undefined["dice_mean"] == "no test case"
    train = TrainReply(val_dice=math.nan, case_count=4)
    assert train.undefined == {"val_dice": "no validation score (no validation case)"}
    assert decode_train_reply(encode_train_reply("site_a", train), "n")[1] == train


def test_a_null_needs_a_reason_and_a_reason_needs_a_null() -> None:
    rd = encode_eval_reply("site_a", EvalReply(**SUMMARY))
    del rd[Key.UNDEFINED]  # hd95 missing, no reason given
    with pytest.raises(ProtocolError, match="null metrics"):
        decode_eval_reply(rd, "node 1")
    with pytest.raises(ValueError, match="null metrics"):
        EvalReply(**{**SUMMARY, "hd95_mean": 1.0, "hd95_std": 1.0},
                  undefined={"dice_mean": "made up"})


def test_the_reply_passes_the_egress_policy_and_is_logged(tmp_path: Path) -> None:
    rd = encode_eval_reply("site_a", EvalReply(**SUMMARY))
    arrays, scalars = record_contents(rd)
    assert check_reply(default_policy(), "evaluate", arrays, scalars).allowed
    log = AuditLog(tmp_path / "egress.jsonl")
    e = log.append(run_id="r", peer="c", direction="out", msg_type="evaluate", config=scalars)
    assert e.config["hd95_mean"].startswith("HD95 undefined in 3 of 3")
    assert verify_log(log.path).ok


def test_logging_a_refusal_with_nan_never_raises(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "egress.jsonl")
    e = log.append(run_id="r", peer="c", direction="out", msg_type="evaluate",
                   decision="refused", config={"hd95_mean": np.float64("nan")},
                   reason="evaluate: metric 'hd95_mean': non-finite value")
    assert e.config == {"hd95_mean": None, NONFINITE_KEY: "hd95_mean=nan: not finite, logged "
                        "as null (strict JSON has no NaN/Infinity)"}
    assert verify_log(log.path).ok
