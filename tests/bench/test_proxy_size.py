"""bench.proxy_size: rows on a smaller proxy, paired with the same rows on the full proxy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.proxy_size import main


def _run(folder: Path, dice: dict[str, dict[int, list[float]]]) -> Path:
    """A distill folder whose ``runs/<row>`` hold per-seed per-case Dice (``seed<s>/``
    folders when there are several seeds, one ``result.json`` otherwise)."""
    for row, seeds in dice.items():
        for seed, values in seeds.items():
            d = folder / "runs" / row / (f"seed{seed}" if len(seeds) > 1 else "")
            d.mkdir(parents=True, exist_ok=True)
            cases = {f"case{i:03d}": {"dice": v} for i, v in enumerate(values)}
            (d / "result.json").write_text(json.dumps({"seed": seed,
                                                       "cases": {"site_a": cases}}))
    return folder


def test_proxy_size_table_by_hand(tmp_path: Path) -> None:
    full = _run(tmp_path / "full", {
        "student_only": {0: [0.6, 0.6, 0.6], 1: [0.6, 0.6, 0.6]},
        "multi_inverse_dice_loss": {0: [0.7, 0.7, 0.7], 1: [0.7, 0.7, 0.8]}})
    small = _run(tmp_path / "small", {
        "student_only": {0: [0.4, 0.5, 0.6], 1: [0.4, 0.5, 0.6]},
        "multi_inverse_dice_loss": {0: [0.6, 0.7, 0.8], 1: [0.6, 0.6, 0.8]}})
    out = tmp_path / "ps.json"
    assert main(["--full", f"9={full}", "--size", f"3={small}", "--rows",
                 "student_only,multi_inverse_dice_loss", "--out", str(out)]) == 0
    got = {(e["proxy_cases"], e["row"]): e for e in json.loads(out.read_text())["rows"]}
    assert got[(3, "student_only")]["mean_dice"] == pytest.approx(0.5)
    # small - full, no-KD: (-0.2, -0.1, 0) twice: mean -0.1
    assert got[(3, "student_only")]["vs_full"]["mean_diff"] == pytest.approx(-0.1)
    # small - full, default: seed 0 (-0.1, 0, +0.1), seed 1 (-0.1, -0.1, 0): mean -0.2/6
    assert got[(3, "multi_inverse_dice_loss")]["vs_full"]["mean_diff"] == pytest.approx(-0.2 / 6)
    # KD gain on 3 cases: (0.2, 0.2, 0.2) and (0.2, 0.1, 0.2): mean 1.1/6; on 9: 0.1, 0.1+1/30
    assert got[(3, "multi_inverse_dice_loss")]["kd_gain"]["mean_diff"] == pytest.approx(1.1 / 6)
    assert got[(9, "multi_inverse_dice_loss")]["kd_gain"]["mean_diff"] == pytest.approx(
        (0.1 * 5 + 0.2) / 6)
    assert "vs_full" not in got[(9, "student_only")]
    md = out.with_suffix(".md").read_text()
    assert "| 3 | `multi_inverse_dice_loss` | 2 | 0.683 (0.024) |" in md


def test_a_single_seed_row_reads_its_one_result(tmp_path: Path) -> None:
    run = _run(tmp_path / "one", {"student_only": {4: [0.5, 0.7]}})
    from bench.compare_students import seed_case_dice

    assert seed_case_dice(run / "runs" / "student_only") == {
        "seed4": {"site_a/case000": 0.5, "site_a/case001": 0.7}}
