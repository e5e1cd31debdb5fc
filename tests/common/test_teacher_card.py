"""The teacher card (``teacher.json``): round trip, older files, bad files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from common.data.plan import Plan
from common.data.teacher_card import CARD_VERSION, TeacherCard, TeacherCardError, TeacherInput

PLAN = Plan(size=48, spacing=(1.5, 1.5), norm="ct", ct_clip=(-100.0, 300.0), ct_mean=50.0,
            ct_std=90.0, labels=[1, 2], label_name="kidney")


def _trained_card() -> TeacherCard:
    """A card as ``site-node train`` writes it (validation set present)."""
    return TeacherCard(architecture="tiny_unet", params=1234,
                       input=TeacherInput(in_channels=1, num_classes=2, size=48), plan=PLAN,
                       checkpoint="best.pt", checkpoint_selection="best_val_dice", best_epoch=3,
                       val_dice=0.8125, held_out_score=True,
                       test={"dice_mean": 0.75, "n": 2},
                       data_fingerprint={"modality": "CT", "cases": {"train": 4}},
                       created="2026-01-01T00:00:00Z")


def test_round_trip_keeps_every_value_and_the_json_layout(tmp_path: Path) -> None:
    card = _trained_card()
    path = card.write(tmp_path)
    assert path == tmp_path / "teacher.json"
    raw = json.loads(path.read_text())
    assert raw["version"] == CARD_VERSION == 1
    assert raw["plan"] == {**PLAN.model_dump(mode="json"), "spacing": [1.5, 1.5]}
    assert raw["input"] == {"in_channels": 1, "num_classes": 2, "size": 48}
    assert "note" not in raw  # only the keys the writer set
    back = TeacherCard.read(tmp_path)
    assert back.model_dump() == card.model_dump()
    assert back.plan == PLAN and back.plan_or_default() == PLAN
    assert back.as_json() == raw == card.as_json()
    assert TeacherCard.read(path).model_dump() == back.model_dump()  # folder or file path


def test_nan_score_is_written_as_null(tmp_path: Path) -> None:
    TeacherCard(val_dice=float("nan"), best_epoch=None).write(tmp_path)
    raw = json.loads((tmp_path / "teacher.json").read_text())
    assert raw == {"val_dice": None, "best_epoch": None, "version": 1}


def test_older_file_without_version_loads_with_the_old_values(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = {"architecture": "unet", "params": 99, "val_dice": 0.5, "best_epoch": 7,
           "input": {"size": 96}, "data_fingerprint": {"modality": "CT"}, "extra": [1]}
    (tmp_path / "teacher.json").write_text(json.dumps(old))
    card = TeacherCard.read(tmp_path)
    assert card.version == 0 and card.plan is None
    assert (card.architecture, card.params, card.val_dice, card.best_epoch) == ("unet", 99, 0.5, 7)
    assert card.input == TeacherInput(in_channels=1, num_classes=2, size=96)
    assert card.model_extra == {"extra": [1]}
    with caplog.at_level(logging.WARNING):
        plan = card.plan_or_default()
    assert (plan.size, plan.norm, plan.spacing, plan.labels) == (96, "ct", None, None)
    assert "no preprocessing plan" in caplog.text and "teacher.json" in caplog.text
    # rewritten: same keys and values (input filled in) plus the current version
    full_input = {"in_channels": 1, "num_classes": 2, "size": 96}
    assert card.as_json() == {**old, "input": full_input, "version": CARD_VERSION}


def test_empty_old_card_defaults(tmp_path: Path) -> None:
    (tmp_path / "teacher.json").write_text("{}")
    card = TeacherCard.read(tmp_path)
    assert card.version == 0 and card.val_dice is None and card.modality == "MRI"
    plan = card.plan_or_default()
    assert (plan.size, plan.norm) == (64, "mri")


@pytest.mark.parametrize(("text", "reason"), [
    ("{not json", "unreadable teacher card"),
    ("[1, 2]", "unreadable teacher card (not a JSON object)"),
    ('{"plan": {"size": -3}}', "invalid preprocessing plan (plan.size:"),
    ('{"val_dice": "high"}', "invalid teacher card (val_dice:"),
    ('{"version": 99}', "newer than this release"),
])
def test_corrupt_file_is_one_line_naming_it(tmp_path: Path, text: str, reason: str) -> None:
    (tmp_path / "teacher.json").write_text(text)
    with pytest.raises(TeacherCardError) as info:
        TeacherCard.read(tmp_path)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1 and msg.startswith(f"{tmp_path / 'teacher.json'}: ")
    assert reason in msg
    assert isinstance(info.value, ValueError)  # a DataError: CLIs print it as one line


def test_missing_file_is_an_error_or_none(tmp_path: Path) -> None:
    assert TeacherCard.read(tmp_path, missing_ok=True) is None
    assert not TeacherCard.exists(tmp_path)
    with pytest.raises(TeacherCardError, match=r"teacher\.json: not found"):
        TeacherCard.read(tmp_path)
