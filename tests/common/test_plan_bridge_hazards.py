"""Plan-level hazards of the bridge: what makes a sound teacher answer nothing on the query,
found before any slice is sent (the CT-offset and padding-ring failure modes)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from common.data.plan import Plan
from common.kd.plan_bridge import bridge_hazards, bridged_teacher_outputs, renormalise
from tests.common._oracle import OracleTeacher, mri_plan


def _ct(clip: tuple[float, float], mean: float, std: float, spacing: float = 1.0) -> Plan:
    return Plan(size=64, spacing=(spacing, spacing), norm="ct", ct_clip=clip, ct_mean=mean,
                ct_std=std)


#: a proxy in HU and a site whose files store HU + 1024 (the spleen benchmark's Duke-like site)
PROXY_HU = _ct((-17.5, 109.5), 71.2, 27.7)
STORED_PLUS_1024 = _ct((997.8, 1170.9), 1102.1, 29.9)


def test_ct_in_other_units_is_named_and_really_clips_to_one_value() -> None:
    hazards = bridge_hazards(PROXY_HU, STORED_PLUS_1024)
    assert len(hazards) == 1 and hazards[0].startswith("CT in other units")
    assert "[998, 1171]" in hazards[0] and "[-18, 110]" in hazards[0]
    slices = np.random.default_rng(0).normal(0.0, 1.0, (2, 1, 64, 64)).astype(np.float32)
    mapped = renormalise(slices, PROXY_HU, STORED_PLUS_1024)
    assert np.unique(mapped).size == 1  # what the hazard says: one value everywhere
    assert bridge_hazards(PROXY_HU, _ct((-40.0, 150.0), 60.0, 35.0)) == []  # both in HU


@pytest.mark.parametrize("teacher_mm,ring", [(1.40625, True), (0.9, False), (1.08, False)])
def test_a_teacher_canvas_wider_than_the_query_field_is_a_padding_ring(
        teacher_mm: float, ring: bool) -> None:
    """The prostate benchmark's grids: the student's 64 px at 1.08 mm (69 mm); a teacher at
    1.41 mm (90 mm canvas) pads the field, one at 0.9 mm (58 mm) crops it."""
    hazards = bridge_hazards(mri_plan(1.08, 64), mri_plan(teacher_mm, 64))
    assert [h.split(":")[0] for h in hazards] == (["padding ring"] if ring else [])
    if ring:
        assert "(90 x 90 mm)" in hazards[0] and "(69 x 69 mm)" in hazards[0]


def test_the_bridge_logs_a_hazard_once_per_pair(caplog: pytest.LogCaptureFixture) -> None:
    query, teacher = mri_plan(1.0, 32), mri_plan(1.7, 32)  # 54 mm canvas, 32 mm field
    images = np.zeros((2, 1, 32, 32), np.float32)
    masks = np.zeros((2, 32, 32), np.uint8)
    with caplog.at_level(logging.WARNING, logger="common.kd.plan_bridge"):
        for _ in range(2):
            bridged_teacher_outputs(OracleTeacher(1.7), images, masks, torch.device("cpu"),
                                    query, teacher)
    rings = [r for r in caplog.records if "padding ring" in r.getMessage()]
    assert len(rings) == 1
