"""CT stored as HU + 1024 is read as HU; HU, other offsets and MRI are left alone."""

from __future__ import annotations

import numpy as np
import pytest

from common.data.ct_units import as_hu, stored_offset
from common.data.native import normalise
from common.data.plan import Plan


def _body(rng: np.random.Generator) -> np.ndarray:
    """A small body CT in HU: 40 % air (-1000), 20 % fat (-100), 40 % soft tissue (50)."""
    vol = np.concatenate([np.full(400, -1000.0), np.full(200, -100.0), np.full(400, 50.0)])
    return (vol + rng.normal(0, 5, vol.size)).reshape(10, 10, 10)


@pytest.mark.parametrize("shift,expected", [(0.0, 0.0), (1024.0, 1024.0), (3000.0, 0.0)])
def test_only_hu_plus_1024_is_shifted(shift: float, expected: float) -> None:
    hu = _body(np.random.default_rng(0))
    assert stored_offset(hu + shift) == expected
    if expected:
        assert np.allclose(as_hu(hu + shift), hu, atol=1e-3)


def test_a_crop_without_air_is_still_recognised_and_soft_tissue_alone_is_not() -> None:
    fat_and_tissue = np.concatenate([np.full(300, -100.0), np.full(700, 50.0)])
    assert stored_offset(fat_and_tissue + 1024) == 1024.0  # darkest 924 -> -100 HU: fat
    assert stored_offset(np.full(1000, 50.0)) == 0.0  # median 50 HU: already HU


def test_normalise_reads_both_storages_to_the_same_values() -> None:
    plan = Plan(size=8, norm="ct", ct_clip=(-100.0, 200.0), ct_mean=50.0, ct_std=50.0)
    hu = np.round(_body(np.random.default_rng(1)))  # stored values are integers
    assert np.array_equal(normalise(hu, plan), normalise(hu + 1024.0, plan))
    assert float(normalise(hu, plan).min()) == pytest.approx(-3.0)  # (-100 - 50) / 50
    mri = Plan(size=8, norm="mri")  # an MRI is never shifted: z-scoring ignores the offset
    assert np.allclose(normalise(hu + 1024.0, mri), normalise(hu, mri), atol=1e-4)
