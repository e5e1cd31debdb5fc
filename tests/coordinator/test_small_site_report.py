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


# --- scoring on the labelled proxy when no site holds a test case -------------------------


def _proxy_rows() -> list[dict]:
    nan = math.nan
    teacher = {"run": "teacher_a", "teachers": ["a"], "weighting": None,
               "sites": {"a": {"dice_mean": nan}}, "mean_dice": nan}
    student = {"run": "multi_equal", "teachers": ["a"], "weighting": "equal",
               "sites": {"a": {"dice_mean": nan}}, "mean_dice": nan,
               "proxy": {"dice_mean": 0.8125, "voe_mean": 0.3158, "hd95_mean": 2.5}}
    return [teacher, student]


def test_table_and_first_lines_say_the_rows_were_scored_on_the_proxy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from coordinator.distill.config import ExperimentConfig
    from coordinator.distill.report import evaluation, table_rows, write_results

    rows = _proxy_rows()
    assert evaluation(rows) == "proxy"
    assert evaluation([{**r, "proxy": None} for r in rows]) == "none"
    header, body = table_rows(rows)
    assert header[3:] == ["a Dice", "a VOE", "a HD95 mm", "proxy Dice", "proxy VOE",
                          "proxy HD95 mm", "mean Dice"]
    assert body[0][6:9] == ["-", "-", "-"]  # the teacher row was not scored on the proxy
    assert body[1][6:9] == ["0.812", "0.316", "2.500"]
    cfg = ExperimentConfig.model_validate({"name": "small", "out": str(tmp_path), "proxy": "p",
                                           "sites": [{"name": "a", "data": "d",
                                                      "teacher_dir": "t"}]})
    write_results(rows, cfg, tmp_path, 1.0)
    lines = (tmp_path / "results.md").read_text().splitlines()
    assert lines[0].startswith("# small:")
    assert lines[1].startswith("**Evaluation: scored on the labelled proxy (the student "
                               "trained on it: optimistic).**")  # right under the title
    assert "No held-out test case at any site" not in "\n".join(lines)  # scored after all


def test_train_on_all_sites_get_student_rows_scored_on_the_labelled_proxy(
        tiny_sites: dict, tiny_teachers: dict, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Teachers whose split holds every case in train (what ``train_on_all`` writes): no site
    test case, so each student row is scored on the proxy, the same way a site scores its
    test cases; the proxy Dice equals the mean of the per-case Dice."""
    import json
    import shutil

    from common.data.split import Split, load_split, save_split
    from coordinator.distill import experiment
    from coordinator.distill.config import (
        ExperimentConfig,
        RunsConfig,
        SiteSpec,
        StudentTrainConfig,
        WeightingSpec,
    )
    from coordinator.local_sites import LocalSites

    teachers = {}
    for name in ("site_a", "site_b"):
        teachers[name] = shutil.copytree(tiny_teachers[name], tmp_path / "t" / name)
        s = load_split(teachers[name] / "split.json")
        save_split(teachers[name] / "split.json",
                   Split(train=sorted([*s.train, *s.val, *s.test]), val=[], test=[]))
    cfg = ExperimentConfig(
        name="small", out=tmp_path / "exp", proxy=tiny_sites["proxy"], seed=0,
        sites=[SiteSpec(name=n, data=tiny_sites[n], teacher_dir=teachers[n]) for n in teachers],
        student=StudentTrainConfig(model="espnet", size=32, epochs=1, device="cpu"),
        runs=RunsConfig(baseline=True, single_teacher=False,
                        weightings=[WeightingSpec(name="equal")]))
    rows = experiment.run_experiment(cfg, LocalSites(cfg))
    students = [r for r in rows if not r["run"].startswith("teacher_")]
    assert [r["run"] for r in students] == ["student_only", "multi_equal"]
    for r in students:
        assert math.isnan(r["mean_dice"]) and r["proxy"]["n"] == 6.0  # the 6 proxy cases
        dice = [c["dice"] for c in r["proxy_cases"].values()]
        assert len(dice) == 6 and r["proxy"]["dice_mean"] == sum(dice) / 6
        assert 0.0 <= r["proxy"]["dice_mean"] <= 1.0
    assert all("proxy" not in r for r in rows if r["run"].startswith("teacher_"))
    md = (tmp_path / "exp" / "results.md").read_text()
    assert md.splitlines()[1].startswith("**Evaluation: scored on the labelled proxy")
    saved = json.loads((tmp_path / "exp" / "runs" / "multi_equal" / "result.json").read_text())
    assert saved["proxy"]["dice_mean"] == students[1]["proxy"]["dice_mean"]
