"""bench.compare_students pairs rows of separate experiment folders on seed and case."""

from __future__ import annotations

import json
from pathlib import Path

from bench.compare_students import main


def _row(folder: Path, dice: dict[int, list[float]]) -> Path:
    for seed, values in dice.items():
        d = folder / f"seed{seed}"
        d.mkdir(parents=True)
        cases = {f"case{i:03d}": {"dice": v} for i, v in enumerate(values)}
        (d / "result.json").write_text(json.dumps({"cases": {"site_a": cases}}))
    return folder


def test_paired_difference_by_hand(tmp_path: Path) -> None:
    a = _row(tmp_path / "a", {0: [0.5, 0.6, 0.7], 1: [0.4, 0.5, 0.6]})
    b = _row(tmp_path / "b", {0: [0.6, 0.7, 0.8], 1: [0.5, 0.5, 0.7]})
    out = tmp_path / "cmp.json"
    assert main(["--run", f"a={a}", "--run", f"b={b}", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["mean_dice"] == 0.55 and rows[0]["seeds"] == 2
    vs = rows[1]["vs_a"]
    # b - a: seed 0 (+0.1, +0.1, +0.1), seed 1 (+0.1, 0, +0.1): mean 0.5/6
    assert abs(vs["mean_diff"] - 0.5 / 6) < 1e-12
    assert vs["seeds"] == 2 and vs["cases"] == 3
