"""Per-case scores in the evaluate reply: computed in the test split's order under pseudonymous
keys, allowed by the egress policy, logged by the signed exchange log, absent when the site's
policy does not list them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from common.protocol import EvalConfig, decode_eval_reply, encode_eval_reply, eval_scores


def test_handle_evaluate_sends_each_case_and_the_gate_logs_it(
        tiny_sites: dict, tiny_teachers: dict, tmp_path: Path) -> None:
    from common.models import build_model
    from site_node.app import NodeSettings, handle_evaluate
    from site_node.egress import EgressGate, RequestInfo
    from site_node.policy import default_policy

    node = NodeSettings.from_node_config({"data-path": str(tiny_sites["site_c"]),
                                          "teacher-dir": str(tiny_teachers["site_c"]),
                                          "site-name": "site_c"})
    split = json.loads((node.teacher_dir / "split.json").read_text())
    state = build_model("enet", in_channels=1, num_classes=2).state_dict()
    cfg = EvalConfig(run_id="t", run_name="r", model_name="enet", size=32)
    rep = handle_evaluate(node, cfg, state)
    keys = [f"case{i:03d}" for i in range(len(split["test"]))]
    assert list(rep.cases) == keys  # test split order, never file names
    dice = [c.dice for c in rep.cases.values()]
    assert rep.dice_mean is not None and math.isclose(float(np.mean(dice)), rep.dice_mean)
    rd = encode_eval_reply("site_c", rep)
    sealed = EgressGate(tmp_path / "state").seal(RequestInfo("evaluate", "t", "node 1"), rd)
    entry = json.loads((tmp_path / "state" / "audit" / "egress.jsonl").read_text()
                       .splitlines()[-1])
    assert entry["decision"] == "sent" and entry["config"]["case000.dice"] == dice[0]
    assert not any(split["test"][0] in str(v) for v in entry["config"].values())
    _, back = decode_eval_reply(sealed, "node 1")
    summary, cases = eval_scores(back)
    assert list(cases) == keys and cases["case000"]["dice"] == dice[0]
    assert summary["n"] == len(keys)
    strict = default_policy()
    strict.replies["evaluate"].case_metric_keys = []
    assert handle_evaluate(node, cfg, state, strict).cases == {}
