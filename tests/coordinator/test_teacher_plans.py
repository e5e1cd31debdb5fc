"""No silent mismatch: plan facts on the wire, plan-aware queries, proxy Dice check."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from common.data.plan import Plan
from common.kd.plan_bridge import bridged_teacher_outputs
from common.kd.targets import TeacherTargets
from common.protocol import (
    ProtocolError,
    QueryConfig,
    TrainConfig,
    TrainReply,
    decode_query,
    decode_train_reply,
    encode_query,
    encode_train_reply,
    slice_hash,
)
from coordinator.distill.teacher_check import TeacherMismatchError, check_teachers, proxy_dice
from tests.common._oracle import OracleTeacher, mri_plan, native_proxy, prepare

CPU = torch.device("cpu")
STUDENT, COARSE = mri_plan(1.5, 40), mri_plan(2.5, 32)


def _targets(lost: bool) -> tuple[TeacherTargets, np.ndarray, float]:
    """The coarse oracle's targets on the student grid (bridged, or with its plan lost) and
    its native Dice (what it would report as validation Dice)."""
    img, msk = native_proxy([True, False, True])
    model = OracleTeacher(2.5)
    n_img, n_msk = prepare(img, msk, COARSE)
    native = proxy_dice(model.seg_forward(torch.from_numpy(n_img)).logits.numpy(), n_msk)
    q_img, q_msk = prepare(img, msk, STUDENT)
    t = bridged_teacher_outputs(model, q_img, q_msk, CPU, STUDENT, None if lost else COARSE)
    return t, q_msk, native


def test_proxy_dice_is_pooled_over_slices() -> None:
    logits = np.zeros((2, 2, 2, 2), np.float32)
    logits[0, 1, 0, :] = 1.0  # slice 0 predicts its top row
    masks = np.zeros((2, 2, 2), np.uint8)
    masks[0, 0, 0] = masks[1, 1, 1] = 1
    assert proxy_dice(logits, masks) == pytest.approx(2 * 1 / (2 + 2))
    assert proxy_dice(np.zeros_like(logits), np.zeros_like(masks)) == 1.0


def test_a_lost_plan_warns_and_is_refused_past_the_floor(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    lost, masks, native = _targets(lost=True)
    with caplog.at_level(logging.WARNING):
        scores = check_teachers(["site_x"], lost, masks, {"site_x": native})
    assert scores["site_x"] < 0.7 < 0.95 < native
    assert f"teacher site_x: proxy Dice {scores['site_x']:.3f} vs its validation Dice " \
           f"{native:.3f}" in caplog.text
    with pytest.raises(TeacherMismatchError, match=r"site_x: proxy Dice 0\.\d+ vs .* 0\.9\d+"):
        check_teachers(["site_x"], lost, masks, {"site_x": native}, floor=0.8)


def test_a_bridged_teacher_passes_the_floor(caplog: pytest.LogCaptureFixture) -> None:
    ok, masks, native = _targets(lost=False)
    with caplog.at_level(logging.WARNING):
        scores = check_teachers(["site_x"], ok, masks, {"site_x": native}, floor=0.9)
    assert abs(scores["site_x"] - native) < 0.03 and not caplog.records
    # no validation Dice (NaN: no validation cases): logged only, never refused
    check_teachers(["site_x"], _targets(lost=True)[0], masks, {"site_x": math.nan}, floor=0.9)


def test_train_reply_carries_the_plan_facts_through_the_egress_policy() -> None:
    from site_node.policy import check_reply, default_policy

    plan = Plan(size=64, spacing=(0.75, 0.8), norm="ct", ct_mean=40.0, ct_std=100.0)
    rep = TrainReply.model_validate({"val_dice": 0.9, "case_count": 12,
                                     **TrainReply.plan_fields(plan)})
    rd = encode_train_reply("site_a", rep)
    metrics = dict(rd["metrics"])
    assert check_reply(default_policy(), "train", {}, metrics).allowed
    assert set(metrics) == {"val_dice", "case_count", "plan_spacing_y", "plan_spacing_x",
                            "plan_size", "plan_norm"}  # no CT statistics leave
    site, back = decode_train_reply(rd, "node 1")
    assert site == "site_a" and back.plan_text() == "0.75x0.8 mm, 64 px, ct"
    assert TrainReply(val_dice=0.5, case_count=3).plan_text() == "no plan"


def test_query_states_its_grid_and_is_validated() -> None:
    imgs = np.zeros((2, 1, 40, 40), np.float32)
    hashes = [slice_hash(i) for i in imgs]
    cfg = QueryConfig(run_id="t", chunk=0, n_chunks=1, size=40, slice_hashes=hashes,
                      plan_json=STUDENT.model_dump_json())
    got, _, _ = decode_query(encode_query(imgs, np.zeros((2, 40, 40), np.uint8), cfg))
    assert got.plan() == STUDENT
    with pytest.raises(ValueError, match="plan_json size 40 != query size 32"):
        QueryConfig(run_id="t", chunk=0, n_chunks=1, size=32, slice_hashes=[],
                    plan_json=STUDENT.model_dump_json())
    rd = encode_query(imgs, np.zeros((2, 40, 40), np.uint8), cfg)
    rd["config"]["plan_json"] = '{"size": -3}'
    with pytest.raises(ProtocolError, match="field plan_json: .*not a Plan \\(size: "):
        decode_query(rd)


def test_site_answers_on_the_query_grid(tiny_sites: dict, tiny_teachers: dict) -> None:
    from common.data.test_split import site_plan
    from coordinator.distill.proxy import load_proxy
    from site_node.app import NodeSettings, handle_query, handle_train

    proxy = load_proxy(tiny_sites["proxy"], 48)  # the teachers were trained at 32 px
    node = NodeSettings.from_node_config({"data-path": str(tiny_sites["site_a"]),
                                          "teacher-dir": str(tiny_teachers["site_a"]),
                                          "site-name": "site_a"})
    assert site_plan(tiny_teachers["site_a"]).size == 32  # type: ignore[union-attr]
    assert proxy.plan is not None
    cfg = QueryConfig(run_id="t", chunk=0, n_chunks=1, size=48, slice_hashes=proxy.hashes[:4],
                      plan_json=proxy.plan.model_dump_json())
    t = handle_query(node, cfg, proxy.images[:4], proxy.masks[:4])
    assert tuple(t.logits.shape) == (1, 4, 2, 48, 48)
    assert tuple(t.at_early.shape) == (1, 4, 24, 24) and tuple(t.at_deep.shape) == (1, 4, 6, 6)
    rep = handle_train(node, TrainConfig(run_id="t"))
    assert rep.plan_size == 32 and rep.plan_norm == 1 and rep.plan_spacing_y > 0
