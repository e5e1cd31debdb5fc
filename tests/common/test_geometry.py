"""Geometry checks on the full affine and canonical (RAS) loading."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.errors import DataError
from common.data.layout import discover_dataset
from common.data.nifti import load_nifti
from common.data.slices import load_volumes
from tests.common._nifti_cases import LPS_05, RAS_027, Geometry, write_case, write_dataset


def _refused(root: Path) -> str:
    with pytest.raises(DataError) as info:
        load_volumes(discover_dataset(root), None, 64)
    return str(info.value)


def test_label_in_ras_on_an_lps_image_is_refused_naming_both_files(tmp_path: Path) -> None:
    """Same shape and zooms, only the orientation differs: the old check accepted it."""
    root = write_dataset(tmp_path, LPS_05, "01", n=1)
    image, label = write_case(root, "case_0", LPS_05, label_geo=Geometry("RAS", LPS_05.zooms))
    msg = _refused(root)
    assert msg == f"{image}: geometry differs from label {label}: orientation LPS vs RAS"


@pytest.mark.parametrize(("label_geo", "expected"), [
    (Geometry("LPS", LPS_05.zooms, origin=(-60.0, 40.0, 14.0)),
     "origin (-60.0, 40.0, 12.5) vs (-60.0, 40.0, 14.0) mm"),
    (Geometry("LPS", (0.5, 0.55, 3.0)), "spacing (0.5, 0.5, 3.0) vs (0.5, 0.55, 3.0) mm"),
])
def test_origin_and_spacing_differences_are_named(tmp_path: Path, label_geo: Geometry,
                                                  expected: str) -> None:
    root = write_dataset(tmp_path, LPS_05, "01", n=1)
    write_case(root, "case_0", LPS_05, label_geo=label_geo)
    msg = _refused(root)
    assert msg.endswith(expected) and "\n" not in msg


def test_origin_within_tolerance_is_accepted(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, LPS_05, "01", n=1)
    write_case(root, "case_0", LPS_05, label_geo=Geometry("LPS", LPS_05.zooms,
                                                          origin=(-60.0, 40.0, 12.505)))
    assert load_volumes(discover_dataset(root), None, 64)[0].label.any()


def test_a_4d_label_is_refused(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, RAS_027, "01", n=1)
    lab = root / "labelsTr" / "case_0.nii.gz"
    data = np.asarray(nib.load(lab).dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), RAS_027.affine()), lab)
    assert _refused(root) == f"{lab}: expected a 3D volume, got shape (448, 360, 4, 2)"


def test_lps_file_is_loaded_in_canonical_ras(tmp_path: Path) -> None:
    """The same voxels stored LPS and RAS load to the same (z, y, x) array."""
    data = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2) + 1
    ras = np.diag([0.5, 0.5, 3.0, 1.0])
    lps = np.diag([-0.5, -0.5, 3.0, 1.0])
    lps[:3, 3] = [1.5, 1.0, 0.0]  # voxel centres coincide with the RAS file's
    nib.save(nib.Nifti1Image(data, ras), tmp_path / "ras.nii.gz")
    nib.save(nib.Nifti1Image(data[::-1, ::-1].copy(), lps), tmp_path / "lps.nii.gz")
    a, sa = load_nifti(tmp_path / "ras.nii.gz")
    b, sb = load_nifti(tmp_path / "lps.nii.gz")
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 3, 4) and sa == sb == (3.0, 0.5, 0.5)
