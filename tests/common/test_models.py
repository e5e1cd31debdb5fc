"""Model zoo contract tests (CPU, 64x64, batch 2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.models import MODELS, SegModel, build_model, count_params
from common.models.roles import STUDENTS, TEACHERS, TEST_TEACHERS
from common.registry import RegistryError

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: 1 intra-op thread

# (reference parameter count, relative tolerance) for in_channels=1, num_classes=2
REFERENCE_PARAMS: dict[str, tuple[int, float]] = {
    "enet": (353_761, 0.10),
    "espnet": (183_725, 0.10),
    "mobilenetv2": (2_228_996, 0.10),
    "lraspp_mobilenet_v3_large": (3_218_020, 0.02),  # torchvision's 3.2M, 1 in, 2 out
    "deeplabv3plus_r50": (26_700_000, 0.02),
    "fpn_resnext101_32x8d": (89_300_000, 0.02),
    "fcn_resnet101": (51_900_000, 0.02),
    # default build drops the encoder layers smp keeps but never runs (see test below)
    "pspnet_r50": (2_236_226, 0.02),
    "tiny_unet": (100_000, 0.50),
}


#: The product's models (a bench module imported earlier in the session may add its own).
PRODUCT_MODELS = [n for n in MODELS.names() if MODELS.get(n).__module__.startswith("common.")]


def _assert_params_close(name: str, n: int) -> None:
    ref, tol = REFERENCE_PARAMS[name]
    assert abs(n - ref) <= tol * ref, f"{name}: {n} params, reference {ref} (+-{tol:.0%})"


def test_registry_holds_all_roles() -> None:
    assert set(STUDENTS) | set(TEACHERS) | set(TEST_TEACHERS) <= set(MODELS.names())


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(RegistryError) as err:
        build_model("nope")
    msg = str(err.value)
    assert "nope" in msg
    assert all(name in msg for name in MODELS.names())


def _check_output(model: SegModel, x: torch.Tensor) -> torch.Tensor:
    """Forward + shape/NaN checks; returns a loss touching logits and both tapped maps."""
    out = model.seg_forward(x)
    assert out.logits.shape == (2, 2, 64, 64)
    assert len(out.features) >= 2
    assert out.features[0].shape[-2:] == (32, 32)
    assert max(out.features[-1].shape[-2:]) < 16
    for t in (out.logits, *out.features):
        assert torch.isfinite(t).all()
    target = torch.randint(0, 2, (2, 64, 64))
    feat = sum(f.pow(2).mean() for f in out.features)
    return F.cross_entropy(out.logits, target) + 1e-3 * feat


@pytest.mark.parametrize("name", PRODUCT_MODELS)
def test_model_contract(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=2)
    assert isinstance(model, SegModel)
    _assert_params_close(name, count_params(model))
    x = torch.randn(2, 1, 64, 64)
    model.train()
    _check_output(model, x).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not zero, f"parameters with all-zero gradient: {zero[:5]}"
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.seg_forward(x).logits)


def test_stock_pspnet_matches_paper_count() -> None:
    """smp's PSPNet keeps layer3/layer4 (never run at depth 3): 24.3M as in the paper."""
    with torch.device("meta"):
        stock = build_model("pspnet_r50", prune_unused=False)
    assert abs(count_params(stock) - 24_300_000) <= 0.02 * 24_300_000


def test_in_channels_and_classes_are_honoured() -> None:
    x = torch.randn(1, 3, 64, 64)
    for name in (*STUDENTS, *TEST_TEACHERS):
        model = build_model(name, in_channels=3, num_classes=4).eval()
        with torch.no_grad():
            assert model(x).shape == (1, 4, 64, 64), name


def test_lraspp_is_torchvisions_network_with_emkd_taps() -> None:
    """The explicit ``seg_forward`` gives torchvision's own output; the taps are the first
    inverted residual (1/2), the 1/8 low branch and the 960-map end of encoder (1/16)."""
    torch.manual_seed(0)
    model = build_model("lraspp_mobilenet_v3_large", in_channels=1, num_classes=2).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = model.seg_forward(x)
        torch.testing.assert_close(out.logits, model.net(x)["out"], rtol=0, atol=0)
    assert [tuple(f.shape) for f in out.features] == [(2, 16, 32, 32), (2, 40, 8, 8),
                                                      (2, 960, 4, 4)]
    assert out.decoder is not None and tuple(out.decoder.shape) == (2, 128, 8, 8)
    assert model.net.backbone["0"][0].in_channels == 1
    # torchvision's 0.01 left the running statistics at their initial values after a short run
    moms = {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert moms == {0.1}


def test_lraspp_trains_under_the_kd_loss() -> None:
    """Its 1/16 deep map meets the teachers' 1/8 attention maps (resized) in the KD loss."""
    from common.kd.losses import KDLoss
    from common.kd.targets import TeacherTargets

    torch.manual_seed(0)
    model = build_model("lraspp_mobilenet_v3_large").train()
    x, y = torch.randn(2, 1, 64, 64), (torch.rand(2, 64, 64) > 0.7).long()
    t = TeacherTargets(logits=torch.randn(1, 2, 2, 64, 64), at_early=torch.rand(1, 2, 32, 32),
                       at_deep=torch.rand(1, 2, 8, 8), rc_early=torch.rand(1, 2),
                       rc_deep=torch.rand(1, 2))
    loss = KDLoss()(model.seg_forward(x), y, t)
    assert float(loss["mid"].detach()) > 0 and float(loss["kl"].detach()) > 0
    loss["total"].backward()
    assert model.net.backbone["1"].block[0][0].weight.grad.abs().sum() > 0  # early tap trained
