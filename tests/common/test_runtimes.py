"""Conv+BN folding, agreement, timing and runtime choice of :mod:`common.inference.runtimes`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.inference.runtimes import argmax_agreement, fastest, fold_conv_bn, pooled_dice, timings


def _conv_bn() -> nn.Sequential:
    """1x1 conv (w=2, b=1) then BN (mean 1, var 4, eps 0, gamma 3, beta 0.5)."""
    conv, bn = nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1, eps=0.0)
    assert conv.bias is not None and bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(1.0)
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(3.0)
        bn.bias.fill_(0.5)
    return nn.Sequential(conv, bn).eval()


def test_fold_conv_bn_by_hand() -> None:
    model = _conv_bn()
    x = torch.tensor([[[[0.0, 1.0], [-1.0, 2.0]]]])
    assert fold_conv_bn(model, x) == 1
    # scale 3/2: weight 2*1.5 = 3, bias (1-1)*1.5 + 0.5 = 0.5; the BN is gone
    conv = model[0]
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    assert conv.weight.item() == 3.0 and conv.bias.item() == 0.5
    assert isinstance(model[1], nn.Identity)
    with torch.no_grad():
        assert model(x).flatten().tolist() == [0.5, 3.5, -2.5, 6.5]


class _Residual(nn.Module):
    """``bn(conv(x)) + conv(x)``: the conv output has a second use, so no folding."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _conv_bn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body[0](x)
        return self.body[1](y) + y


def test_fold_is_rolled_back_when_the_conv_output_is_used_elsewhere() -> None:
    model = _Residual().eval()
    x = torch.tensor([[[[0.0, 1.0], [-1.0, 2.0]]]])
    with torch.no_grad():
        before = model(x).clone()
    assert fold_conv_bn(model, x) == 0
    assert isinstance(model.body[1], nn.BatchNorm2d)
    with torch.no_grad():
        assert torch.equal(model(x), before)  # unchanged, bit for bit


@pytest.mark.parametrize("name", ["enet", "mobilenetv2"])
def test_fold_keeps_student_outputs(name: str) -> None:
    from common.models import build_model

    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=2).eval()
    for m in model.modules():  # non-trivial statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ref = model(x)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = fold_conv_bn(model, x)
    assert folded > bns // 2  # most BNs follow a conv in these students
    assert bns - folded == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert float((model(x) - ref).abs().max()) < 1e-4


def test_agreement_and_dice_by_hand() -> None:
    a = np.zeros((1, 2, 2, 2), np.float32)
    a[0, 1] = [[1, 1], [-1, -1]]  # argmax: [[1, 1], [0, 0]]
    b = a.copy()
    b[0, 1, 0, 0] = -1  # argmax: [[0, 1], [0, 0]]
    assert argmax_agreement(a, b) == 0.75
    masks = np.array([[[1, 0], [1, 0]]], np.uint8)
    assert pooled_dice(a, masks) == 0.5  # 2*1 / (2 + 2)
    assert pooled_dice(np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2))) == 1.0


def test_timings_median_and_p95() -> None:
    calls = iter([0.0] * 1 + [0.001 * k for k in range(1, 21)])
    import time

    got = timings(lambda: time.sleep(next(calls)), reps=20, warmup=1)
    assert got["reps"] == 20.0
    assert 10.0 <= got["median_ms"] < 10.5 + 20 and got["p95_ms"] >= 19.0
    assert got["p95_ms"] >= got["median_ms"]


def test_fastest_respects_the_agreement_gate() -> None:
    latency = {"eager": 9.0, "pt2": 3.0, "onnx": 5.0, "onnx-int8": 1.0}
    assert fastest(latency, latency) == "onnx-int8"
    assert fastest(latency, latency, {"onnx-int8": 0.994}) == "pt2"
    assert fastest(latency, ["eager", "onnx"]) == "onnx"
    assert fastest({}, ["eager", "pt2", "onnx-int8"]) == "pt2"  # no timing: fixed order
    assert fastest({}, []) is None
