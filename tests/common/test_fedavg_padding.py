"""FedAvg's local update follows the student rows' padding rule (``[kd] padding``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.data.augment import AugmentConfig
from common.fedavg_local import LocalSpec, _Slices, local_update
from common.models import build_model

NO_AUG = AugmentConfig(enabled=False)
BOX = np.array([[4, 12, 2, 14]] * 4, np.int32)  # real pixels: rows 4:12, cols 2:14 of 16 x 16


def _spec(padding: str) -> LocalSpec:
    return LocalSpec(model="tiny_unet", local_epochs=1, batch_size=2, max_lr=0.01, base_lr=0.001,
                     step_size_up=2, weight_decay=0.0, dice_weight=0.2, lovasz_weight=0.3,
                     seed=0, server_round=1, padding=padding)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 1, 16, 16)).astype(np.float32)
    masks = np.zeros((4, 16, 16), np.uint8)
    masks[:, 6:10, 5:11] = 1
    return images, masks


def test_slices_carry_the_validity_of_each_pixel() -> None:
    from common.data.augment import build_augment

    images, masks = _data()
    _, _, valid = _Slices(images, masks, build_augment(NO_AUG), BOX)[0]
    want = torch.zeros(16, 16)
    want[4:12, 2:14] = 1
    assert torch.equal(valid, want)
    assert torch.equal(_Slices(images, masks, build_augment(NO_AUG))[0][2], torch.ones(16, 16))


@pytest.mark.parametrize(("padding", "moves"), [("exclude", False), ("none", True)])
def test_labels_on_the_padding_change_the_update_only_when_counted(padding: str,
                                                                   moves: bool) -> None:
    images, masks = _data()
    torch.manual_seed(0)
    state = build_model("tiny_unet", in_channels=1, num_classes=2).state_dict()
    noisy = masks.copy()
    noisy[:, :2, :] = 1  # foreground labels on the padding rows only
    cpu = torch.device("cpu")
    a, _ = local_update(state, images, masks, _spec(padding), NO_AUG, cpu, BOX)
    b, _ = local_update(state, images, noisy, _spec(padding), NO_AUG, cpu, BOX)
    same = all(torch.allclose(a[k].float(), b[k].float()) for k in a)
    assert same is not moves
