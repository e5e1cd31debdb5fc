"""Training over the whole field of view: slices wider than the canvas give random crops of the
whole field (foreground oversampled), deterministic given the seed, while slices that fit the
canvas are exactly the prepared slices as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.data.layout import CaseRef
from common.data.nifti import save_nifti
from common.data.plan import Plan
from common.data.slices import SliceDataset, Volume, crop_origin, load_volume

CANVAS = 32
PLAN = Plan(size=CANVAS, spacing=(1.0, 1.0), norm="mri")  # native spacing: no resampling


def _case(root: Path, hw: tuple[int, int], box: tuple[slice, slice]) -> Volume:
    """A (4, H, W) noisy scan at 1 mm in-plane with a bright organ at ``box`` (y, x)."""
    rng = np.random.default_rng(1)
    img = rng.normal(0.0, 1.0, (4, *hw)).astype(np.float32)
    lab = np.zeros((4, *hw), np.uint8)
    lab[1:3, box[0], box[1]] = 1
    img[lab == 1] = 50.0
    image, label = root / "scan.nii.gz", root / "labels" / "scan.nii.gz"
    save_nifti(image, img, (3.0, 1.0, 1.0))
    save_nifti(label, lab, (3.0, 1.0, 1.0), np.uint8)
    return load_volume(CaseRef("scan", image, label), "MRI", CANVAS, plan=PLAN)


def _items(ds: SliceDataset, epoch: int) -> list[dict]:
    ds.set_epoch(epoch)
    return [ds[i] for i in range(len(ds))]


def test_a_corner_organ_of_a_field_twice_the_canvas_is_trained_on(tmp_path: Path) -> None:
    # 64 x 64 field, canvas 32: the centre crop is rows / columns 16..47; the organ (4 x 5 px
    # in the top-left corner, on slices 1 and 2) lies wholly outside it
    vol = _case(tmp_path, (64, 64), (slice(2, 6), slice(3, 8)))
    assert vol.wide and vol.image.shape == (4, 32, 32)
    assert int(vol.label.sum()) == 0  # the old centre crop: no organ at all
    assert int(vol.whole_label.sum()) == 2 * 4 * 5
    ds = SliceDataset([vol], seed=0)
    assert len(ds) == 4
    seen = sum(int(it["mask"].sum()) for e in range(3) for it in _items(ds, e))
    assert seen > 0
    for it in _items(ds, 0):  # every crop is a real S x S window of the whole field
        assert it["image"].shape == (1, CANVAS, CANVAS) and it["mask"].shape == (CANVAS, CANVAS)
    # deterministic given the seed; another seed or epoch draws other crops
    again = SliceDataset([vol], seed=0)
    for a, b in zip(_items(ds, 1), _items(again, 1), strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    other = SliceDataset([vol], seed=0, crop_seed=7)
    assert any(not torch.equal(a["image"], b["image"])
               for a, b in zip(_items(ds, 1), _items(other, 1), strict=True))


def test_foreground_crops_hold_the_organ_and_stay_inside_the_field() -> None:
    label = np.zeros((64, 80), np.uint8)
    label[60, 77] = 1  # one pixel in the bottom-right corner
    rng = np.random.default_rng(0)
    # always foreground: centred on (60, 77), clipped to the field: (64 - 32, 80 - 32)
    assert crop_origin(label, 32, rng, foreground=1.0) == (32, 48)
    for _ in range(50):  # uniform: anywhere with the crop inside the field
        y, x = crop_origin(label, 32, rng, foreground=0.0)
        assert 0 <= y <= 32 and 0 <= x <= 48


def test_a_field_that_fits_the_canvas_gives_the_prepared_slices_unchanged(
        tmp_path: Path) -> None:
    vol = _case(tmp_path, (30, 28), (slice(2, 6), slice(3, 8)))
    assert not vol.wide and vol.whole_label is vol.label
    ds = SliceDataset([vol], seed=0, crop_seed=5)
    for epoch in (0, 3):
        for it in _items(ds, epoch):
            z = it["z"]
            np.testing.assert_array_equal(it["image"][0].numpy(), vol.image[z])
            np.testing.assert_array_equal(it["mask"].numpy(), vol.label[z].astype(np.int64))
    # skipping empty slices is unchanged: one of the two organ-free slices (0, 3) dropped
    kept = SliceDataset([vol], skip_empty_fraction=0.5, seed=4).index
    assert len(kept) == 3 and {(0, 1), (0, 2)} <= set(kept)
    assert SliceDataset([vol], skip_empty_fraction=0.5, seed=4, crop_seed=9).index == kept
