"""A model is scored on test cases prepared with its own plan; the target label stays the site's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.data.plan import Plan
from common.data.split import Split, save_split
from common.data.test_split import load_test_split, site_plan
from common.protocol import EvalConfig, ProtocolError, decode_model


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3-case phantom site (96 px slices, style B: 0.8 mm in-plane) and a teacher folder
    whose plan is 1.2 mm at 64 px (what fitting 96 x 0.8 mm into 64 px gives)."""
    from common.data.phantom import make_phantom

    root = tmp_path_factory.mktemp("split_site")
    data = make_phantom(root / "data", "prostate", "B", 3, seed=3, shape=(4, 96, 96))
    tdir = root / "teacher"
    tdir.mkdir()
    plan = Plan(size=64, spacing=(1.2, 1.2), labels=[1], label_name="prostate")
    (tdir / "teacher.json").write_text(json.dumps({"plan": plan.model_dump(mode="json")}))
    return data, tdir


def _case_ids(data: Path) -> list[str]:
    from common.data.layout import discover_dataset

    return [c.case_id for c in discover_dataset(data).cases]


def test_teacher_plan_by_default_student_plan_when_given(site: tuple[Path, Path]) -> None:
    data, tdir = site
    ids = _case_ids(data)
    save_split(tdir / "split.json", Split(ids[:1], ids[1:2], ids[2:]))
    own = load_test_split(data, tdir, 64)
    assert [v.case_id for v in own] == ids[2:]
    assert own[0].spacing[1:] == pytest.approx((1.2, 1.2))
    student = Plan(size=64, spacing=(0.9, 0.9), labels=[7], label_name="not-this-site's")
    vols = load_test_split(data, tdir, 64, student)
    # 76.8 mm / 0.9 mm = 85.3 -> 85 px whole pixels: 0.9035 mm
    assert vols[0].spacing[1:] == pytest.approx((76.8 / 85, 76.8 / 85), rel=1e-4)
    assert vols[0].image.shape[1:] == (64, 64)
    # the site's own target label (1), not the plan sender's (7): same native mask either way
    assert vols[0].native_label is not None and own[0].native_label is not None
    np.testing.assert_array_equal(vols[0].native_label, own[0].native_label)
    assert vols[0].native_label.sum() > 0


def test_site_plan_absent_and_corrupt(tmp_path: Path, site: tuple[Path, Path]) -> None:
    assert site_plan(tmp_path) is None
    (tmp_path / "teacher.json").write_text(json.dumps({"plan": {"size": -3}}))
    from common.data.errors import DataError

    with pytest.raises(DataError, match="teacher.json"):
        site_plan(tmp_path)


def test_evaluate_request_carries_a_validated_plan() -> None:
    plan = Plan(size=64, spacing=(0.9, 0.9))
    ec = EvalConfig(run_id="r1", run_name="run", model_name="enet", size=64,
                    plan_json=plan.model_dump_json())
    assert ec.plan() == plan
    assert EvalConfig(run_id="r1", run_name="run", model_name="enet", size=64).plan() is None
    from flwr.app import ConfigRecord

    bad = ConfigRecord({**ec.model_dump(exclude_none=True), "plan_json": '{"size": 0}'})
    with pytest.raises(ProtocolError):
        decode_model(bad, EvalConfig, "coordinator", "config")
