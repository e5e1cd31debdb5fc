"""The FedAvg-family local update trains on whole-field crops of scans wider than the canvas
(the sampler of site teacher training, :class:`common.data.slices.SliceDataset`), and on the
prepared slices, bit for bit as before, when the field fits the canvas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import common.fedavg_local as fl
from common.data.augment import AugmentConfig
from common.data.layout import CaseRef
from common.data.nifti import save_nifti
from common.data.plan import Plan
from common.data.slices import Volume, load_volume
from common.models import build_model

CANVAS = 32
PLAN = Plan(size=CANVAS, spacing=(1.0, 1.0), norm="mri")  # native spacing: no resampling
NO_AUG = AugmentConfig(enabled=False)


def _case(root: Path, hw: tuple[int, int]) -> Volume:
    """A (4, H, W) noisy scan at 1 mm in-plane with a 4 x 5 px organ at rows 2..5, columns
    3..7 of slices 1 and 2 (the top-left corner)."""
    rng = np.random.default_rng(1)
    img = rng.normal(0.0, 1.0, (4, *hw)).astype(np.float32)
    lab = np.zeros((4, *hw), np.uint8)
    lab[1:3, 2:6, 3:8] = 1
    img[lab == 1] = 50.0
    image, label = root / "scan.nii.gz", root / "labels" / "scan.nii.gz"
    save_nifti(image, img, (3.0, 1.0, 1.0))
    save_nifti(label, lab, (3.0, 1.0, 1.0), np.uint8)
    return load_volume(CaseRef("scan", image, label), "MRI", CANVAS, plan=PLAN)


def _flat(vol: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The volume's slices as ``site_node.fedavg.train_slices`` flattens them."""
    d = len(vol.image)
    return vol.image[:, None].astype(np.float32), vol.label.astype(np.uint8), \
        np.tile(vol.extent, (d, 1))


def _spec(rnd: int = 2) -> fl.LocalSpec:
    return fl.LocalSpec(model="tiny_unet", local_epochs=2, batch_size=2, max_lr=0.01,
                        base_lr=0.001, step_size_up=2, weight_decay=0.0, dice_weight=0.2,
                        lovasz_weight=0.3, seed=0, server_round=rnd)


def _record(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every training item the local update draws: ``(crop epoch or None, i, image, mask,
    valid)``."""
    seen: list[tuple[Any, ...]] = []
    original = fl._Slices.__getitem__

    def spy(self: fl._Slices, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = original(self, i)
        epoch = None if self.crops is None else self.crops.epoch
        seen.append((epoch, i, out[0][0].numpy(), out[1].numpy(), out[2].numpy()))
        return out

    monkeypatch.setattr(fl._Slices, "__getitem__", spy)
    return seen


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("tiny_unet", in_channels=1, num_classes=2).state_dict()


def test_a_corner_organ_of_a_field_twice_the_canvas_reaches_the_local_update(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a 64 x 24 field on a 32 px canvas: the centre crop keeps rows 16..47 (no organ); the
    # whole field is 64 x 32 with the 24 real columns at 4..27, so every crop is rows
    # y..y+31, all 32 columns, real pixels in columns 4..27 only
    vol = _case(tmp_path, (64, 24))
    assert vol.wide and int(vol.label.sum()) == 0 and int(vol.whole_label.sum()) == 40
    images, masks, extents = _flat(vol)
    seen = _record(monkeypatch)
    fl.local_update(_state(), images, masks, _spec(), NO_AUG, torch.device("cpu"), extents)
    assert len(seen) == 8 and sum(int(m.sum()) for *_, m, _ in seen) == 0  # centre crops
    seen.clear()
    fl.local_update(_state(), images, masks, _spec(), NO_AUG, torch.device("cpu"), extents,
                    [vol])
    assert len(seen) == 8 and sorted({e for e, *_ in seen}) == [2, 3]  # round 2: epochs 2, 3
    whole = vol.case.whole_image if vol.case else None
    assert whole is not None and whole.shape == (4, 64, 32)
    columns = np.zeros((CANVAS, CANVAS), np.float32)
    columns[:, 4:28] = 1.0
    organ = 0
    for _, i, img, mask, valid in seen:
        ys = [y for y in range(33) if np.array_equal(whole[i, y:y + CANVAS], img)]
        assert len(ys) == 1  # a real 32 x 32 window of the whole field
        rows = max(0, min(6, ys[0] + CANVAS) - max(2, ys[0]))  # organ rows 2..5 in the window
        assert int(mask.sum()) == (rows * 5 if i in (1, 2) else 0)
        np.testing.assert_array_equal(valid, columns)
        organ += int(mask.sum())
    assert organ > 0
    # deterministic given the seed: the same crops again
    again = _record(monkeypatch)
    fl.local_update(_state(), images, masks, _spec(), NO_AUG, torch.device("cpu"), extents,
                    [vol])
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(seen[8:], again, strict=True))


def test_a_field_that_fits_the_canvas_trains_bit_for_bit_as_before(tmp_path: Path) -> None:
    vol = _case(tmp_path, (30, 28))
    assert not vol.wide
    images, masks, extents = _flat(vol)
    cpu = torch.device("cpu")
    a, la = fl.local_update(_state(), images, masks, _spec(), NO_AUG, cpu, extents)
    b, lb = fl.local_update(_state(), images, masks, _spec(), NO_AUG, cpu, extents, [vol])
    assert la == lb and all(torch.equal(a[k], b[k]) for k in a)
