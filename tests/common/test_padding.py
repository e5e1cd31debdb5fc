"""Canvas padding is one value of the normalised scale per plan, never the volume's own minimum."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.native import normalise, prepare_image
from common.data.plan import Plan
from common.kd.plan_bridge import to_teacher_grid


def test_pad_value_is_zero_for_mri_and_air_for_ct() -> None:
    assert Plan(size=8, norm="mri").pad_value() == 0.0
    ct = Plan(size=8, norm="ct", ct_clip=(-100.0, 300.0), ct_mean=50.0, ct_std=100.0)
    assert ct.pad_value() == pytest.approx(-1.5)  # (-100 - 50) / 100
    # a CT volume's normalised minimum, whenever it holds air, is that same value
    assert float(normalise(np.array([-1000.0, 0.0, 200.0]), ct).min()) == pytest.approx(-1.5)


def _write(path: Path, data: np.ndarray, spacing: float) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([spacing, spacing, 3.0, 1.0])),
             path)
    return path


def test_a_narrow_mri_field_is_padded_with_zero_not_its_darkest_tail(tmp_path: Path) -> None:
    """A 4 x 4 mm field on an 8 x 8 mm canvas: the ring is exactly 0 (the volume's mean after
    z-scoring), while the volume's own normalised minimum lies well below it."""
    rng = np.random.default_rng(0)
    data = rng.normal(100.0, 10.0, (4, 4, 3))
    data[0, 0, :] = 0.0  # one dark voxel per slice: a long dark tail
    case = prepare_image(_write(tmp_path / "a.nii.gz", data, 1.0),
                         Plan(size=8, spacing=(1.0, 1.0), norm="mri", mri_percentiles=(0, 100)))
    assert case.image.shape == (3, 8, 8)
    ring = np.ones((8, 8), bool)
    ring[2:6, 2:6] = False
    assert np.all(case.image[:, ring] == 0.0)
    assert case.image[:, 2:6, 2:6].min() < -3.0  # the dark voxel, about -3.9 sd


def test_the_bridge_pads_with_the_teachers_value() -> None:
    """Query field 4 px at 2 mm -> 8 px at 1 mm on a 12 px teacher canvas: a 2 px ring of the
    teacher plan's pad value (CT: its normalised air), whatever the slice holds."""
    query = Plan(size=4, spacing=(2.0, 2.0), norm="ct", ct_clip=(-100.0, 300.0), ct_mean=50.0,
                 ct_std=100.0)
    teacher = query.model_copy(update={"size": 12, "spacing": (1.0, 1.0)})
    images = np.full((1, 1, 4, 4), 0.7, np.float32)
    out, masks = to_teacher_grid(images, np.ones((1, 4, 4), np.uint8), query, teacher)
    assert out.shape == (1, 1, 12, 12) and masks.shape == (1, 12, 12)
    assert np.allclose(out[0, 0, 2:10, 2:10], 0.7)
    assert np.all(out[0, 0, :2] == -1.5) and np.all(out[0, 0, :, 10:] == -1.5)
    assert int(masks.sum()) == 64
