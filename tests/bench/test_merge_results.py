"""bench/merge_results.py: one page from a config run in parts, refused unless the parts pair."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from bench.merge_results import MergeError, main, merge
from coordinator.distill.repeats import mean_row

CONFIG = """name = "split"
out = "o"
proxy = "p"
seed = 0
repeats = 2
[[sites]]
name = "site_a"
data = "d"
teacher_dir = "t"
[runs]
weightings = [{ name = "inverse_dice_loss" }, { name = "equal" }]
"""
DICE = [0.60, 0.70, 0.80, 0.50]


def _row(run: str, shift: float) -> dict:
    """A 2-seed row on 4 cases of one site; per-case Dice = DICE + shift + 0.01 * seed."""
    seeds = []
    for seed in (0, 1):
        cases = {"site_a": {f"case{i:03d}": {"dice": d + shift + 0.01 * seed, "voe": 0.2,
                                             "hd95": 1.0} for i, d in enumerate(DICE)}}
        mean = sum(DICE) / 4 + shift + 0.01 * seed
        seeds.append({"run": run, "teachers": ["site_a"], "weighting": run, "seed": seed,
                      "sites": {"site_a": {"dice_mean": mean}}, "mean_dice": mean,
                      "cases": cases, "train_seconds": 5.0})
    return {**mean_row(seeds, [0, 1], Path("x")), "wall_seconds": 10.0}


def _write(path: Path, rows: list[dict]) -> Path:
    raw = json.dumps({"version": 1, "rows": rows}).encode()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def _cfg(tmp_path: Path) -> Path:
    path = tmp_path / "split.toml"
    path.write_text(CONFIG)
    return path


def test_parts_sharing_the_default_row_merge_into_one_page(tmp_path: Path) -> None:
    default = _row("multi_inverse_dice_loss", 0.1)
    a = _write(tmp_path / "a_results.json.gz", [_row("student_only", 0.0), default])
    b = _write(tmp_path / "b.json", [default, _row("multi_equal", 0.05)])
    out = tmp_path / "merged"
    assert main(["--config", str(_cfg(tmp_path)), "--part", str(a), "--part", str(b),
                 "--out", str(out)]) == 0
    runs = [r["run"] for r in json.loads((out / "results.json").read_text())["rows"]]
    assert runs == ["student_only", "multi_inverse_dice_loss", "multi_equal"]
    md = (out / "results.md").read_text()
    # the default minus equal, paired on 2 seeds x 4 cases: exactly +0.05 on every pair
    assert "| `multi_inverse_dice_loss` | `multi_equal` | 2 x 4 | +0.050 |" in md
    assert "| `multi_inverse_dice_loss` | `student_only` | 2 x 4 | +0.100 |" in md
    # the rows' training times (2 seeds x 5 s each), summed over the 3 rows
    assert "training time of the rows (all seeds; scoring and teachers not counted) 30 s." in md


def test_a_shared_row_that_differs_is_refused(tmp_path: Path, capsys) -> None:
    a = _write(tmp_path / "a.json", [_row("multi_inverse_dice_loss", 0.1)])
    b = _write(tmp_path / "b.json", [_row("multi_inverse_dice_loss", 0.1 + 1e-9),
                                     _row("multi_equal", 0.0)])
    out = tmp_path / "merged"
    assert main(["--config", str(_cfg(tmp_path)), "--part", str(a), "--part", str(b),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "row multi_inverse_dice_loss differs between" in err and str(b) in err
    assert not out.exists()


def test_a_part_sharing_no_row_is_refused() -> None:
    with pytest.raises(MergeError, match="b shares no row"):
        merge([("a", [_row("multi_inverse_dice_loss", 0.1)]), ("b", [_row("pooled", 0.2)])])


def test_a_shared_row_is_taken_from_the_first_part() -> None:
    first, later = _row("multi_inverse_dice_loss", 0.1), _row("multi_inverse_dice_loss", 0.1)
    later["wall_seconds"] = 99.0  # timing differs, scores do not: still the same row
    rows = merge([("a", [first]), ("b", [later, _row("multi_equal", 0.0)])])
    assert [r["run"] for r in rows] == ["multi_inverse_dice_loss", "multi_equal"]
    assert rows[0]["wall_seconds"] == 10.0


def test_unreadable_part_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(b"not gzip")
    ok = _write(tmp_path / "a.json", [_row("multi_inverse_dice_loss", 0.1)])
    assert main(["--config", str(_cfg(tmp_path)), "--part", str(ok), "--part", str(bad),
                 "--out", str(tmp_path / "m")]) == 2
    assert f"{bad}: not a results file" in capsys.readouterr().err


def test_the_page_names_the_config_rows_no_part_holds(tmp_path: Path) -> None:
    cfg = tmp_path / "peers.toml"
    cfg.write_text(CONFIG.replace("[runs]\n", "[runs]\nsingle_teacher = true\npooled = true\n")
                   + "[runs.fedavg]\nrounds = 2\n")
    default = _row("multi_inverse_dice_loss", 0.1)
    a = _write(tmp_path / "a.json", [_row("student_only", 0.0), default])
    b = _write(tmp_path / "b.json", [default, _row("single_site_a", 0.02), _row("fedavg", 0.03)])
    out = tmp_path / "merged"
    assert main(["--config", str(cfg), "--part", str(a), "--part", str(b),
                 "--out", str(out)]) == 0
    md = (out / "results.md").read_text()
    # equal and pooled are configured and absent; single (single_site_a) and fedavg are present
    assert "> Not run: equal, pooled (in the config, in no part).\n" in md
    assert "Transport" not in md  # a merged page has no transport of its own


def test_a_page_with_every_config_row_has_no_not_run_note(tmp_path: Path) -> None:
    cfg = tmp_path / "all.toml"  # rows: student_only, the default, equal
    cfg.write_text(CONFIG.replace("[runs]\n", "[runs]\nsingle_teacher = false\n"))
    default = _row("multi_inverse_dice_loss", 0.1)
    a = _write(tmp_path / "a.json", [_row("student_only", 0.0), default])
    b = _write(tmp_path / "b.json", [default, _row("multi_equal", 0.05)])
    out = tmp_path / "merged"
    assert main(["--config", str(cfg), "--part", str(a), "--part", str(b),
                 "--out", str(out)]) == 0
    assert "Not run" not in (out / "results.md").read_text()
