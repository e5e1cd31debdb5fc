"""Honest small-site runs: a run with no held-out case anywhere says so, and a teacher without a
validation Dice that is far below the others on the proxy is flagged."""

from __future__ import annotations

import math

from coordinator.distill.report import NO_TEST_NOTE, no_test_cases
from coordinator.distill.teacher_check import peer_outliers


def _row(run: str, dice: float) -> dict:
    return {"run": run, "sites": {"a": {"dice_mean": dice}, "b": {"dice_mean": dice}}}


def test_no_held_out_case_anywhere_is_detected() -> None:
    nan = math.nan
    assert no_test_cases([_row("teacher_a", 0.9), _row("student_only", nan),
                          _row("multi_x", nan)])
    assert not no_test_cases([_row("student_only", nan), _row("multi_x", 0.7)])
    assert not no_test_cases([_row("teacher_a", nan)])  # no student row: nothing to say
    assert "No held-out test case at any site" in NO_TEST_NOTE


def test_a_teacher_without_validation_far_below_its_peers_is_flagged() -> None:
    scores = {"a": 0.80, "b": 0.70, "c": 0.0}
    # c: 0.0 < 0.8 x median(0.80, 0.70) = 0.60, and no validation Dice -> flagged
    (line,) = peer_outliers(scores, {"a": 0.9, "b": 0.85, "c": None})
    assert line.startswith("teacher c: proxy Dice 0.000, far below the other teachers' median "
                           "0.750")
    # with a validation Dice of its own, the ratio check of check_teachers applies instead
    assert peer_outliers(scores, {"a": 0.9, "b": 0.85, "c": 0.9}) == []
    # b without validation: 0.70 >= 0.8 x median(0.80, 0.0) = 0.32 -> not flagged
    assert peer_outliers(scores, {"a": 0.9, "b": None, "c": 0.9}) == []
