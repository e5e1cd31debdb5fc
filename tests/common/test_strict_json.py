"""Every JSON file the project writes is strict: NaN becomes null, Infinity is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from common.io import atomic_write_json, json_safe, strict_json_dumps


def _reject(token: str) -> None:
    raise ValueError(f"non-standard JSON constant {token}")


def test_nan_becomes_null_everywhere_in_the_tree(tmp_path: Path) -> None:
    report = {"site": {"hd95_mean": float("nan"), "dice_mean": np.float32(0.5),
                       "cases": [np.float64("nan"), 1.25, (2, np.int64(3))]}, "n": np.int64(2)}
    atomic_write_json(tmp_path / "r.json", report)
    back = json.loads((tmp_path / "r.json").read_text(), parse_constant=_reject)
    assert back == {"site": {"hd95_mean": None, "dice_mean": 0.5,
                             "cases": [None, 1.25, [2, 3]]}, "n": 2}


def test_infinity_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"bad\.json: \$\.site\.hd95\[1\]: inf is not valid"):
        atomic_write_json(tmp_path / "bad.json", {"site": {"hd95": [1.0, float("inf")]}})
    assert not (tmp_path / "bad.json").exists()
    with pytest.raises(ValueError, match=r"\$\.x: -inf"):
        strict_json_dumps({"x": -math.inf})


def test_summary_of_zero_cases_is_written_as_nulls(tmp_path: Path) -> None:
    from common.metrics import summarise

    summary = summarise({})  # nan means, n = 0
    assert math.isnan(summary["dice_mean"])
    text = strict_json_dumps(summary, sort_keys=True)
    assert "NaN" not in text and json.loads(text, parse_constant=_reject)["dice_mean"] is None
    assert json_safe(summary)["n"] == 0.0
