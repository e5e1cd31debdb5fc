"""One failed evaluate does not drop a site (the evaluate retry rule).

Before: ``eval_round`` dropped a site from the roster on its first failed evaluate (e.g. the
error reply that followed an HD95 = NaN refusal), so it scored no later student."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from common.protocol import EvalReply, encode_eval_reply
from coordinator import fed_sites
from coordinator.distill.student import mean_dice
from coordinator.fed_query import Reply, Roster
from coordinator.fed_sites import EVAL_ATTEMPTS, eval_round

GOOD = {"dice_mean": 0.8, "dice_std": 0.1, "voe_mean": 0.3, "voe_std": 0.1, "hd95_mean": 4.0,
        "hd95_std": 1.0, "hd95_undefined": 0.0, "n": 2.0}


def _script(monkeypatch: pytest.MonkeyPatch, answers: list[dict[int, str]]) -> list[list[int]]:
    """Replace the transport: call k answers node -> "ok" | "nan" | "error" | "silent"."""
    asked: list[list[int]] = []

    def exchange(grid: Any, contents: dict, mtype: str, group: str, timeout: float,
                 trail: Any = None) -> list[Reply]:
        plan = answers[len(asked)]
        asked.append(sorted(contents))
        out = []
        for node in contents:
            what = plan[node]
            if what == "error":
                out.append(Reply(node, error="0 egress refused"))
            elif what != "silent":
                rep = EvalReply(**{**GOOD, **({"hd95_mean": math.nan, "hd95_std": math.nan,
                                              "hd95_undefined": 2.0} if what == "nan" else {})})
                out.append(Reply(node, encode_eval_reply(f"site_{node}", rep)))
        return out

    monkeypatch.setattr(fed_sites, "exchange", exchange)
    return asked


def _eval(roster: Roster, run: str) -> dict[str, dict]:
    cfg = SimpleNamespace(student=SimpleNamespace(model="enet", size=32),
                          sites=[SimpleNamespace(name=n) for n in ("site_2", "site_1")])
    s = SimpleNamespace(timeout=1.0, trail=None)
    sites, _ = eval_round(None, roster, run, {"w": torch.zeros(2)}, cfg, s, "1")  # type: ignore[arg-type]
    return sites


def test_a_failed_evaluate_is_retried_once(monkeypatch: pytest.MonkeyPatch) -> None:
    roster = Roster({1: "site_1", 2: "site_2"})
    asked = _script(monkeypatch, [{1: "error", 2: "ok"}, {1: "ok"}])
    sites = _eval(roster, "multi")
    assert asked == [[1, 2], [1]]  # only the failed site is asked again
    assert sites["site_1"]["dice_mean"] == 0.8 and sites["site_2"]["dice_mean"] == 0.8
    assert list(sites) == ["site_2", "site_1"]  # the config's order, not the nodes' ids
    assert roster.names == {1: "site_1", 2: "site_2"} and roster.dropped == {}


def test_a_site_failing_every_attempt_stays_for_later_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert EVAL_ATTEMPTS == 2
    roster = Roster({1: "site_1", 2: "site_2"})
    asked = _script(monkeypatch, [{1: "silent", 2: "nan"}, {1: "error"}, {1: "ok", 2: "ok"}])
    first = _eval(roster, "run_a")
    assert first["site_1"] == {"error": "error reply: 0 egress refused"}
    assert math.isnan(first["site_2"]["hd95_mean"])  # undefined HD95: scored, not dropped
    assert first["site_2"]["undefined"]["hd95_mean"].startswith("HD95 undefined in 2 of 2")
    assert mean_dice(first) == pytest.approx(0.8)  # the failed site has no Dice to average
    assert roster.names == {1: "site_1", 2: "site_2"}  # nobody dropped
    second = _eval(roster, "run_b")
    assert asked[2] == [1, 2] and second["site_1"]["dice_mean"] == 0.8
