"""Step progress with an ETA in the log every 30 s when stderr is not a terminal."""

from __future__ import annotations

import logging

import pytest

from common.training import iterate_progress


def test_non_tty_training_logs_step_progress_with_eta(caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    ticks = iter(float(t) for t in [0, 10, 20, 31, 40, 50, 62, 70, 80, 90, 100])

    with caplog.at_level(logging.INFO, logger="common.training"):
        out = list(iterate_progress(list(range(10)), "epoch 3", clock=lambda: next(ticks)))
    assert out == list(range(10))  # every item, in order
    lines = [r.getMessage() for r in caplog.records]
    # 31 s after the start: 3 of 10 steps -> 31 / 3 * 7 = 72.3 s left; then 6 of 10 at 62 s (41.3 s
    # left), then the last step at 100 s
    assert lines == ["epoch 3: step 3/10 (30 %), 31s elapsed, ETA 1m12s",
                     "epoch 3: step 6/10 (60 %), 1m02s elapsed, ETA 41s",
                     "epoch 3: step 10/10 (100 %), 1m40s elapsed, ETA 0s"]


def test_disabled_progress_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="common.training"):
        assert list(iterate_progress([1, 2], "x", enabled=False,
                                     clock=lambda: 1e9)) == [1, 2]
    assert not caplog.records
