"""Each teacher is served in its own plan and answers on the query grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.data.plan import Plan
from common.kd.plan_bridge import bridged_teacher_outputs, renormalise, to_teacher_grid
from common.kd.teacher_outputs import teacher_outputs
from tests.common._oracle import OracleTeacher, mri_plan, native_proxy, prepare

CPU = torch.device("cpu")
STUDENT = mri_plan(1.5, 40)  # the query grid (60 mm field)
TEACHERS = {"fine": mri_plan(0.75, 64), "coarse": mri_plan(2.5, 32)}  # 48 mm / 80 mm fields
RINGS = [True, False, True]


def _dice(logits: np.ndarray, masks: np.ndarray) -> float:
    pred, gt = logits.argmax(axis=1) > 0, masks > 0
    return 2.0 * float((pred & gt).sum()) / float(pred.sum() + gt.sum())


@pytest.fixture(scope="module")
def proxy() -> tuple[np.ndarray, np.ndarray]:
    return native_proxy(RINGS)


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_bridged_dice_matches_native(name: str, proxy: tuple[np.ndarray, np.ndarray]) -> None:
    plan = TEACHERS[name]
    model = OracleTeacher(plan.spacing[0])  # type: ignore[index]
    native_img, native_msk = prepare(*proxy, plan)
    native = _dice(teacher_outputs(model, native_img, native_msk, CPU).logits[0].numpy(),
                   native_msk)
    q_img, q_msk = prepare(*proxy, STUDENT)
    t = bridged_teacher_outputs(model, q_img, q_msk, CPU, STUDENT, plan)
    bridged = _dice(t.logits[0].numpy(), q_msk)
    lost = _dice(teacher_outputs(model, q_img, q_msk, CPU).logits[0].numpy(), q_msk)
    assert native > 0.95
    assert abs(bridged - native) < 0.03
    assert lost < 0.8  # the same teacher fed the student's grid as is: the failure


def test_reply_shapes_and_unit_attention(proxy: tuple[np.ndarray, np.ndarray]) -> None:
    q_img, q_msk = prepare(*proxy, STUDENT)
    t = bridged_teacher_outputs(OracleTeacher(0.75), q_img, q_msk, CPU, STUDENT,
                                TEACHERS["fine"])
    assert tuple(t.logits.shape) == (1, 3, 2, 40, 40)
    assert tuple(t.at_early.shape) == (1, 3, 20, 20)
    assert tuple(t.at_deep.shape) == (1, 3, 5, 5)
    assert tuple(t.rc_early.shape) == (1, 3)
    norms = t.at_early[0].flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.ones(3), atol=1e-5)
    paper = bridged_teacher_outputs(OracleTeacher(0.75), q_img, q_msk, CPU, STUDENT,
                                    TEACHERS["fine"], at_form="paper")
    assert tuple(paper.at_deep.shape) == (1, 3, 5, 5)
    assert not torch.allclose(paper.at_early[0].flatten(1).norm(dim=1), torch.ones(3))


def test_unseen_pixels_get_the_background_logit(proxy: tuple[np.ndarray, np.ndarray]) -> None:
    # The fine teacher sees 48 mm of the 60 mm field: the outer 6 mm ring of the query is
    # unseen and must be background, with the mean background logit (0, 4 (0 - 0.5) - ...).
    q_img, q_msk = prepare(*proxy, STUDENT)
    t = bridged_teacher_outputs(OracleTeacher(0.75), q_img, q_msk, CPU, STUDENT,
                                TEACHERS["fine"])
    corner = t.logits[0, :, :, 0, 0]
    assert (corner[:, 0] > corner[:, 1]).all()


def test_identity_when_plans_match(proxy: tuple[np.ndarray, np.ndarray]) -> None:
    from common.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny_unet", in_channels=1, num_classes=2)
    q_img, q_msk = prepare(*proxy, STUDENT)
    want = teacher_outputs(model, q_img, q_msk, CPU)
    got = bridged_teacher_outputs(model, q_img, q_msk, CPU, STUDENT,
                                  STUDENT.model_copy(update={"labels": [1]}))
    for a, b in zip(want.as_dict().values(), got.as_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_masks_follow_nearest_to_the_teacher_grid(proxy: tuple[np.ndarray, np.ndarray]
                                                  ) -> None:
    q_img, q_msk = prepare(*proxy, STUDENT)
    t_img, t_msk = to_teacher_grid(q_img, q_msk, STUDENT, TEACHERS["coarse"])
    assert t_img.shape == (3, 1, 32, 32) and t_msk.shape == (3, 32, 32)
    assert set(np.unique(t_msk)) == {0, 1}
    # field 40 px x 1.5 / 2.5 = 24 px placed at offset 4 in 32: the border is padding
    assert (t_img[:, 0, :4] == 0).all() and t_msk[:, :4].sum() == 0


def test_ct_renormalisation_is_hand_computable() -> None:
    q = Plan(size=32, spacing=(1.0, 1.0), norm="ct", ct_clip=(-100.0, 200.0), ct_mean=50.0,
             ct_std=100.0)
    t = q.model_copy(update={"ct_clip": (0.0, 100.0), "ct_mean": 40.0, "ct_std": 20.0})
    x = np.array([[[[-1.0, 0.0, 1.0]]]], np.float32)  # HU -50, 50, 150
    got = renormalise(x, q, t)
    np.testing.assert_allclose(got[0, 0, 0], [(0 - 40) / 20, (50 - 40) / 20, (100 - 40) / 20])
    mri = mri_plan(1.0, 32)
    assert renormalise(x, mri, mri_plan(2.0, 48)) is x  # MRI z-scores are kept as is
