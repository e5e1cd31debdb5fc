"""FLOP counting and the complexity table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.models.complexity import (
    STUDENTS,
    TEACHERS,
    ModelStats,
    count_flops,
    format_table,
    model_stats,
    model_table,
)
from common.registry import RegistryError

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: 1 intra-op thread


def test_conv_flops_hand_computed() -> None:
    # 2 FLOPs per MAC: out elements (2 maps x 4 x 4) x MACs per element (1 x 3 x 3) x 2
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    assert count_flops(conv, (1, 1, 4, 4)) == 2 * (2 * 4 * 4) * (1 * 9) == 576


def test_linear_flops_and_training_mode_restored() -> None:
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, bias=False)).train()
    assert count_flops(lin, (5, 1, 4, 4)) == 2 * 5 * 16 * 3
    assert lin.training


def test_roles_tuples() -> None:
    assert STUDENTS == ("enet", "espnet", "mobilenetv2", "lraspp_mobilenet_v3_large")
    assert "fcn_resnet101" in TEACHERS and not set(STUDENTS) & set(TEACHERS)


def test_table_sorted_by_params() -> None:
    rows = model_table(["mobilenetv2", "tiny_unet", "enet", "espnet"], size=64)
    assert [r.name for r in rows] == ["tiny_unet", "espnet", "enet", "mobilenetv2"]
    assert [r.role for r in rows] == ["teacher", "student", "student", "student"]
    assert all(r.gflops > 0 for r in rows)
    text = format_table(rows)
    lines = text.splitlines()
    assert "Params(M)" in lines[0] and "GFLOPs" in lines[0]
    assert len(lines) == 2 + len(rows)
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_espnet_gflops_at_384() -> None:
    stats = model_stats("espnet", size=384)
    assert isinstance(stats, ModelStats)
    assert 1.0 <= stats.gflops <= 1.6  # reference: about 1.23 GFLOPs


def test_table_uses_paper_pspnet_by_default() -> None:
    (row,) = model_table(["pspnet_r50"], size=64)
    assert abs(row.params - 24_300_000) <= 0.02 * 24_300_000
    (pruned,) = model_table(["pspnet_r50"], size=64, build_kwargs={})
    assert pruned.params < 3_000_000 and pruned.gflops == pytest.approx(row.gflops)


def test_table_unknown_name() -> None:
    with pytest.raises(RegistryError):
        model_table(["nope"])


def test_meta_counting_matches_real() -> None:
    real = count_flops(torch.nn.Conv2d(1, 4, 3, padding=1), (1, 1, 16, 16))
    with torch.device("meta"):
        meta_conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    assert count_flops(meta_conv, (1, 1, 16, 16)) == real
