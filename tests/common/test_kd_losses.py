"""Hand-computed checks of the distillation losses, KDLoss and teacher targets."""

from __future__ import annotations

import math

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.kd.functional import (
    attention_map,
    attention_map_paper,
    region_contrast,
    soft_dice_loss_per_sample,
    teacher_probs,
)
from common.kd.losses import (
    AttentionTransfer,
    KDLoss,
    LogitKL,
    MidLoss,
    RegionContrastLoss,
    SegLoss,
    build_loss,
)
from common.kd.targets import TeacherTargets, compute_teacher_targets
from common.models.base import SegModel, SegOutput
from common.registry import RegistryError


class TinySeg(SegModel):
    """Early map at 1/2, deep map at 1/``2*deep_stride``, logits at input resolution."""

    def __init__(self, c0: int = 3, c1: int = 4, deep_stride: int = 2, k: int = 2) -> None:
        super().__init__()
        self.early = nn.Conv2d(1, c0, 3, stride=2, padding=1)
        self.deep = nn.Conv2d(c0, c1, 3, stride=deep_stride, padding=1)
        self.head = nn.Conv2d(c1, k, 1)

    def seg_forward(self, x: Tensor) -> SegOutput:
        e = torch.tanh(self.early(x))
        d = torch.tanh(self.deep(e))
        logits = F.interpolate(self.head(d), size=x.shape[-2:], mode="bilinear")
        return SegOutput(logits, (e, d))


def _batch(b: int = 2, hw: int = 16) -> tuple[Tensor, Tensor]:
    torch.manual_seed(0)
    images = torch.randn(b, 1, hw, hw)
    masks = torch.zeros(b, hw, hw, dtype=torch.long)
    masks[:, 4:12, 5:11] = 1
    return images, masks


# ---------------------------------------------------------------- KL
S_LOGITS = [[[1.0, 0.0], [2.0, -1.0]], [[0.0, 0.5], [-1.0, 1.0]]]  # (K=2, 2, 2)
T_LOGITS = [[[0.0, 3.0], [1.0, 1.0]], [[2.0, -1.0], [0.0, 1.0]]]


def _softmax2(a: float, b: float) -> tuple[float, float]:
    ea, eb = math.exp(a), math.exp(b)
    return ea / (ea + eb), eb / (ea + eb)


def _expected_kl(temp: float, teacher_first: bool) -> float:
    total = 0.0
    for y in range(2):
        for x in range(2):
            ps = _softmax2(S_LOGITS[0][y][x] / temp, S_LOGITS[1][y][x] / temp)
            pt = _softmax2(T_LOGITS[0][y][x] / temp, T_LOGITS[1][y][x] / temp)
            p, q = (pt, ps) if teacher_first else (ps, pt)
            total += sum(p[k] * (math.log(p[k]) - math.log(q[k])) for k in range(2))
    return total / 4 * temp**2


@pytest.mark.parametrize("temp", [1.0, 2.0])
@pytest.mark.parametrize("direction", ["teacher_student", "student_teacher"])
def test_kl_hand_computed(temp: float, direction: str) -> None:
    s = torch.tensor([S_LOGITS], dtype=torch.float64)
    pt = teacher_probs(torch.tensor([T_LOGITS], dtype=torch.float64), temp)
    loss = LogitKL(temperature=temp, direction=direction)(s, pt)  # type: ignore[arg-type]
    assert loss.item() == pytest.approx(_expected_kl(temp, direction == "teacher_student"))


def test_kl_zero_when_identical_and_safe_with_zero_probs() -> None:
    s = torch.randn(3, 2, 4, 4)
    for direction in ("teacher_student", "student_teacher"):
        kl = LogitKL(temperature=4.0, direction=direction, reduction="none")  # type: ignore[arg-type]
        out = kl(s, teacher_probs(s, 4.0))
        assert out.shape == (3,) and torch.allclose(out, torch.zeros(3), atol=1e-6)
        hard = F.one_hot(torch.randint(0, 2, (3, 4, 4)), 2).permute(0, 3, 1, 2).float()
        s_req = s.clone().requires_grad_(True)
        val = kl(s_req, hard).sum()
        val.backward()
        assert torch.isfinite(val) and torch.isfinite(s_req.grad).all()  # type: ignore[arg-type]


# ---------------------------------------------------------------- AT
FEAT = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[-1.0, 0.0], [-2.0, 1.0]]]])  # (1, 2, 2, 2)


def test_attention_maps_hand_computed() -> None:
    # channel mean of f^2: [[1, 2], [2, 1]]; L2 norm sqrt(10)
    expected = torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]) / math.sqrt(10.0)
    assert torch.allclose(attention_map(FEAT), expected)
    assert torch.allclose(attention_map_paper(FEAT), torch.full((1, 2, 2), 2.0))


def test_at_loss_hand_computed_and_invariances() -> None:
    teacher = torch.full((1, 2, 2), 0.5)  # unit L2 norm
    a = [1 / math.sqrt(10), 2 / math.sqrt(10), 2 / math.sqrt(10), 1 / math.sqrt(10)]
    # default reduce="sum" (not the mean, i.e. this / 4): ||a_s - a_t||^2 = 2 - 2 cos
    expected = sum((v - 0.5) ** 2 for v in a)
    assert expected == pytest.approx(2 - 2 * sum(0.5 * v for v in a))
    at = AttentionTransfer()
    assert at(FEAT, teacher).item() == pytest.approx(expected)
    assert AttentionTransfer(reduce="mean")(FEAT, teacher).item() == pytest.approx(expected / 4)
    assert at(FEAT, attention_map(FEAT)).item() == pytest.approx(0.0, abs=1e-12)
    assert at(3.7 * FEAT, teacher).item() == pytest.approx(expected, rel=1e-5)
    # paper form: d = [2, 2, 2, 2] - t = [1, 0, -1, 1]; loss = || d / ||d||_2 ||_1
    t = torch.tensor([[[1.0, 2.0], [3.0, 1.0]]])
    d = [1.0, 0.0, -1.0, 1.0]
    paper = AttentionTransfer(form="paper")(FEAT, t).item()
    assert paper == pytest.approx(sum(abs(v) for v in d) / math.sqrt(sum(v * v for v in d)))


def test_at_resizes_and_renormalises_student_map() -> None:
    feat = torch.rand(2, 3, 8, 8) + 0.1
    at = AttentionTransfer()
    s_map = at.student_map(feat, (4, 4))
    assert s_map.shape == (2, 4, 4)
    assert torch.allclose(s_map.flatten(1).norm(dim=1), torch.ones(2))
    assert at(feat, s_map).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        AttentionTransfer(form="bogus")  # type: ignore[arg-type]


# ---------------------------------------------------------------- RC
def test_region_contrast_hand_computed() -> None:
    feat = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    mask = torch.tensor([[[0, 1], [0, 1]]])
    p0 = (2.0, 0.5)  # mean over background pixels (0,0), (1,0)
    p1 = (6.0 / 3.0, 1.0 / 3.0)  # sum over foreground / (2 + 1)
    cos = (p0[0] * p1[0] + p0[1] * p1[1]) / (math.hypot(*p0) * math.hypot(*p1))
    assert region_contrast(feat, mask).item() == pytest.approx(cos)
    # mask given at 2x resolution is resized by nearest neighbour to the same result
    big = mask.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert region_contrast(feat, big).item() == pytest.approx(cos)
    rc = RegionContrastLoss(reduction="none")(feat, mask, torch.tensor([0.5]))
    assert rc.item() == pytest.approx((cos - 0.5) ** 2)


# ---------------------------------------------------------------- Seg
def test_seg_loss_matches_smp() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 8, 8)
    _, mask = _batch(2, 8)
    mask[1] = 0
    mask[1, :3, :3] = 1
    expected = 0.2 * smp.losses.DiceLoss(mode="multiclass", classes=[1])(logits, mask)
    expected += 0.3 * smp.losses.LovaszLoss(mode="multiclass")(logits, mask)
    assert SegLoss()(logits, mask).item() == pytest.approx(expected.item())
    per = SegLoss(reduction="none")(logits, mask)
    assert per.shape == (2,)
    for i in range(2):
        assert per[i].item() == pytest.approx(SegLoss()(logits[i : i + 1], mask[i : i + 1]).item())
    twin_logits, twin_mask = logits[:1].repeat(2, 1, 1, 1), mask[:1].repeat(2, 1, 1)
    twin = SegLoss(reduction="none")(twin_logits, twin_mask).mean()
    assert twin.item() == pytest.approx(SegLoss()(twin_logits, twin_mask).item())


def test_soft_dice_loss_per_sample() -> None:
    probs = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]]]])  # (1, 2, 1, 2): fg prob [1, 0]
    mask = torch.tensor([[[1, 1]]])
    # inter 1, sum p 1, sum g 2, smooth 1 -> 1 - 3/4
    assert soft_dice_loss_per_sample(probs, mask).item() == pytest.approx(0.25)


# ---------------------------------------------------------------- targets + KD
def _teachers(images: Tensor, masks: Tensor) -> TeacherTargets:
    torch.manual_seed(10)
    t0 = TinySeg(c0=5, c1=6, deep_stride=1)  # deep map 8x8: student's 4x4 map is upsampled
    t1 = TinySeg(c0=2, c1=7, deep_stride=2)  # deep map 4x4, resized to the agreed 8x8
    sizes = ((8, 8), (8, 8))
    return TeacherTargets.stack(
        [compute_teacher_targets(t, images, masks, at_sizes=sizes) for t in (t0, t1)]
    )


def test_compute_teacher_targets_shapes_and_ranges() -> None:
    images, masks = _batch(3, 16)
    model = TinySeg()
    model.train()
    tt = compute_teacher_targets(model, images, masks)
    assert not model.training and tt.num_teachers == 1 and tt.batch_size == 3
    assert tt.logits.shape == (1, 3, 2, 16, 16) and not tt.logits.requires_grad
    assert tt.at_early.shape == (1, 3, 8, 8) and tt.at_deep.shape == (1, 3, 4, 4)
    for at in (tt.at_early, tt.at_deep):
        assert torch.allclose(at.flatten(2).norm(dim=2), torch.ones(1, 3), atol=1e-5)
    for rc in (tt.rc_early, tt.rc_deep):
        assert rc.shape == (1, 3) and (rc.abs() <= 1 + 1e-6).all()
    sub = tt.index([2, 0])
    assert torch.equal(sub.logits[0, 0], tt.logits[0, 2]) and sub.batch_size == 2
    both = TeacherTargets.stack([tt, tt])
    assert both.num_teachers == 2 and torch.equal(both.teacher(1).rc_deep, tt.rc_deep)
    other = compute_teacher_targets(TinySeg(deep_stride=1), images, masks)
    with pytest.raises(ValueError, match="at_sizes"):
        TeacherTargets.stack([tt, other])
    resized = compute_teacher_targets(TinySeg(deep_stride=1), images, masks,
                                      at_sizes=((8, 8), (4, 4)))
    assert resized.at_deep.shape == (1, 3, 4, 4)
    assert torch.allclose(resized.at_deep.flatten(2).norm(dim=2), torch.ones(1, 3), atol=1e-5)
    assert TeacherTargets.stack([tt, resized]).num_teachers == 2


def test_kd_gradients_reach_every_parameter() -> None:
    images, masks = _batch(2, 16)
    targets = _teachers(images, masks)
    for kw in ({}, {"at_form": "paper", "kl_direction": "student_teacher"}):
        student = TinySeg()
        weights = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
        out = KDLoss(**kw)(student.seg_forward(images), masks, targets, weights)  # type: ignore[arg-type]
        assert set(out) == {"total", "seg", "mid", "kl"}
        assert all(torch.isfinite(v) and v.ndim == 0 for v in out.values())
        assert out["mid"].item() > 0 and out["kl"].item() > 0
        out["total"].backward()
        for name, prm in student.named_parameters():
            assert prm.grad is not None and torch.isfinite(prm.grad).all(), name
            assert prm.grad.abs().sum() > 0, name


def test_kd_one_hot_weights_equal_mono_teacher() -> None:
    images, masks = _batch(2, 16)
    targets = _teachers(images, masks)
    student = TinySeg()
    out = student.seg_forward(images)
    kd = KDLoss(alpha=0.1, beta=0.1)
    multi = kd(out, masks, targets, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    mono = kd(out, masks, targets.teacher(0))
    for key in multi:
        assert multi[key].item() == pytest.approx(mono[key].item(), rel=1e-5)
    manual = SegLoss()(out.logits, masks) + 0.1 * mono["mid"] + 0.1 * mono["kl"]
    assert mono["total"].item() == pytest.approx(manual.item(), rel=1e-6)
    mid = MidLoss()(out.features, (targets.at_early[0], targets.at_deep[0]),
                    (targets.rc_early[0], targets.rc_deep[0]), masks)
    assert mono["mid"].item() == pytest.approx(mid.item(), rel=1e-6)


def test_kd_student_only_weights_checks_and_reduction_none() -> None:
    images, masks = _batch(2, 16)
    targets = _teachers(images, masks)
    out = TinySeg().seg_forward(images)
    base = KDLoss(student_only=True)(out, masks, targets)
    assert base["total"].item() == pytest.approx(SegLoss()(out.logits, masks).item())
    assert base["kl"].item() == 0.0 and KDLoss()(out, masks, None)["mid"].item() == 0.0
    with pytest.raises(ValueError, match="explicit"):
        KDLoss()(out, masks, targets)
    with pytest.raises(ValueError, match="weights shape"):
        KDLoss()(out, masks, targets, torch.ones(2, 3) / 3)
    per = KDLoss(reduction="none")(out, masks, targets, torch.full((2, 2), 0.5))
    assert all(v.shape == (2,) for v in per.values())


def test_build_loss_registry() -> None:
    assert isinstance(build_loss("kl", temperature=2.0), LogitKL)
    with pytest.raises(RegistryError, match="valid: at, kd, kl, mid, rc, seg"):
        build_loss("nope")
