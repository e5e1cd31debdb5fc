"""``results.json`` is read and written through :mod:`coordinator.distill.results_file`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.distill.results_file import (
    RESULTS_VERSION,
    ResultRow,
    ResultsError,
    read_rows,
    write_rows,
)


def _rows() -> list[dict]:
    return [{"run": "teacher_site_a", "mean_dice": 0.8, "sites": {"site_a": {"dice_mean": 0.8}}},
            {"run": "multi_equal", "seed": 0, "mean_dice": float("nan"), "student": "enet",
             "cases": {"site_a": {"case000": {"dice": 0.5, "hd95": None}}},
             "cost": {"bytes_sent": 12}}]


def test_rows_round_trip_with_their_extras_and_a_version(tmp_path: Path) -> None:
    write_rows(tmp_path, _rows())
    raw = json.loads((tmp_path / "results.json").read_text())
    assert raw["version"] == RESULTS_VERSION
    assert raw["rows"][0] == _rows()[0]  # no field added to a row that lacked it
    back = read_rows(tmp_path)
    assert back[0] == _rows()[0]
    assert back[1]["student"] == "enet" and back[1]["cost"] == {"bytes_sent": 12}
    assert back[1]["mean_dice"] is None  # NaN is written as null (strict JSON)
    assert back[1]["cases"]["site_a"]["case000"] == {"dice": 0.5, "hd95": None}


def test_a_file_from_before_the_version_field_still_reads(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps({"rows": [{"run": "a", "mean_dice": 1}]}))
    assert read_rows(tmp_path) == [{"run": "a", "mean_dice": 1.0}]


@pytest.mark.parametrize(("text", "why"), [
    ('{"rows": [{"mean_dice": 0.5}]}', "not a results file"),
    ('{"rows": [{"run": "a"}], "other": 1}', "not a results file"),
    ("[1, 2", "not a results file"),
    ('{"version": 99, "rows": []}', "newer than this fedmtkd reads"),
])
def test_a_bad_results_file_is_one_line_naming_it(tmp_path: Path, text: str, why: str) -> None:
    (tmp_path / "results.json").write_text(text)
    with pytest.raises(ResultsError) as err:
        read_rows(tmp_path)
    assert str(tmp_path / "results.json") in str(err.value) and why in str(err.value)
    assert "\n" not in str(err.value)


def test_a_row_without_a_run_name_is_not_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_rows(tmp_path, [{"mean_dice": 0.5}])
    assert not (tmp_path / "results.json").exists()


def test_a_key_the_row_type_does_not_list_rides_along_unchanged(tmp_path: Path) -> None:
    row = {"run": "fedavg", "mean_dice": 0.5, "train_seconds": 3,
           "future_key": {"ratio": 1, "tags": ["a", "b"], "nested": {"x": None}}}
    assert "future_key" not in ResultRow.__optional_keys__ | ResultRow.__required_keys__
    write_rows(tmp_path, [row])
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == [row]
    back = read_rows(tmp_path)
    assert back == [row]
    assert type(back[0]["future_key"]["ratio"]) is int
    assert type(back[0]["train_seconds"]) is int  # unchecked keys are not coerced either
