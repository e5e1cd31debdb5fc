"""``site-node import-dicom``: synthetic DICOM (pydicom / highdicom writers) round-trips into the
nnU-Net layout with the right orientation, spacing and voxels; ground truth from a DICOM-SEG
or a mask series lands on exactly the image's grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.dicom import read_series
from common.data.dicom_seg import write_seg
from common.data.errors import DataError
from common.data.layout import discover_dataset
from common.data.nifti import load_nifti
from site_node.dicom_import import import_dicom
from tests.common._dicom_data import volume, write_series

SPACING = (0.7, 0.8, 2.5)  # (column, row, slice) mm


def _organ(shape: tuple[int, int, int]) -> np.ndarray:
    """(columns, rows, slices) uint8: an off-centre block, so flips would show."""
    m = np.zeros(shape, np.uint8)
    m[1:4, 6:9, 1:3] = 1
    return m


def _expected_ras(vol: np.ndarray, iop: tuple[float, ...]) -> np.ndarray:
    """(columns, rows, slices) in LPS-based DICOM axes -> canonical RAS (x, y, z) array for the
    two orientations used here (axial: column = patient-left, row = posterior)."""
    if iop == (1, 0, 0, 0, 1, 0):
        return vol[::-1, ::-1, :]  # L -> R and P -> A flips
    raise AssertionError(iop)


def test_seg_ground_truth_round_trips(tmp_path: Path) -> None:
    vol = volume()
    written = write_series(tmp_path / "dicom" / "t2", vol, SPACING)
    series = read_series(tmp_path / "dicom")[0]
    assert [int(h.InstanceNumber) for h in series.headers] == list(range(1, 7))  # sorted by z
    write_seg(_organ(vol.shape), series, tmp_path / "dicom" / "seg" / "seg.dcm",
              {1: "prostate"})
    report = import_dicom(tmp_path / "dicom", tmp_path / "site")
    assert len(written) == 6 and len(report.cases) == 1 and report.labels == {"prostate": 1}
    info = discover_dataset(tmp_path / "site")
    assert info.labels == {"0": "background", "1": "prostate"} and info.modality == "MRI"
    case = info.cases[0]
    img = nib.load(str(case.image))
    assert img.header.get_zooms() == pytest.approx(SPACING, abs=1e-4)
    arr, spacing = load_nifti(case.image)  # canonical RAS (z, y, x)
    assert spacing == pytest.approx((2.5, 0.8, 0.7), abs=1e-4)
    np.testing.assert_array_equal(arr, _expected_ras(vol, series_iop()).transpose(2, 1, 0))
    assert case.label is not None
    lab, _ = load_nifti(case.label)
    np.testing.assert_array_equal(lab, _expected_ras(_organ(vol.shape),
                                                     series_iop()).transpose(2, 1, 0))
    # the RAS affine puts the first stored voxel at the DICOM position (LPS -> RAS)
    first = np.asarray(written[0].ImagePositionPatient) * [-1, -1, 1]
    ras_first = nib.affines.apply_affine(img.affine, _index_of_dicom_origin(img))
    np.testing.assert_allclose(ras_first, first, atol=1e-3)
    text = json.loads((tmp_path / "site" / "import_report.json").read_text())
    assert "0.7 x 0.8 x 2.5 mm, orientation LPS, no missing slices" in text["cases"][0]["series"]


def series_iop() -> tuple[float, ...]:
    return (1, 0, 0, 0, 1, 0)


def _index_of_dicom_origin(img: nib.Nifti1Image) -> np.ndarray:
    """Voxel index of DICOM (column 0, row 0, slice 0) in dcm2niix's array (it may flip)."""
    codes = nib.aff2axcodes(img.affine)
    shape = img.shape
    idx = [0, 0, 0]
    for axis, code in enumerate(codes):
        if code in ("R", "A"):  # DICOM column / row axes run to L / P
            idx[axis] = shape[axis] - 1
    return np.asarray(idx)


def test_mask_series_and_missing_slices_are_reported(tmp_path: Path) -> None:
    vol = volume(seed=1)
    imgs = write_series(tmp_path / "dicom" / "ct", vol, SPACING, modality="CT",
                        description="abdomen")
    write_series(tmp_path / "dicom" / "mask", _organ(vol.shape).astype(np.int16) * 5, SPACING,
                 modality="CT", description="spleen mask", study=imgs[0].StudyInstanceUID,
                 frame=imgs[0].FrameOfReferenceUID)
    write_series(tmp_path / "dicom" / "gap", vol, SPACING, modality="CT",
                 description="gapped", skip=(3,))
    series = read_series(tmp_path / "dicom")
    assert sorted(s.missing for s in series) == [0, 0, 1]
    report = import_dicom(tmp_path / "dicom", tmp_path / "site")
    assert len(report.cases) == 1 and report.labels == {"spleen": 1}
    assert len(report.skipped) == 1 and "1 missing slice(s)" in report.skipped[0]
    info = discover_dataset(tmp_path / "site")
    assert info.modality == "CT" and info.labels == {"0": "background", "1": "spleen"}
    assert info.cases[0].label is not None
    lab, _ = load_nifti(info.cases[0].label)
    np.testing.assert_array_equal(lab, _expected_ras(_organ(vol.shape),
                                                     series_iop()).transpose(2, 1, 0))


def test_an_image_without_ground_truth_goes_to_imagests(tmp_path: Path) -> None:
    write_series(tmp_path / "dicom", volume(), SPACING)
    report = import_dicom(tmp_path / "dicom", tmp_path / "site")
    assert report.cases[0]["image"] == "imagesTs/case_000_0000.nii.gz"
    with pytest.raises(DataError, match="not empty"):
        import_dicom(tmp_path / "dicom", tmp_path / "site")
    with pytest.raises(DataError, match="no DICOM image series"):
        import_dicom(tmp_path / "site", tmp_path / "other")


def test_a_sagittal_series_keeps_its_orientation_and_spacing(tmp_path: Path) -> None:
    """Sagittal: columns run posterior (0.7 mm), rows inferior (0.8 mm), slices along x
    (2.5 mm): canonical RAS spacing (z, y, x) = (0.8, 0.7, 2.5), hand-derived."""
    vol = volume()
    write_series(tmp_path / "dicom", vol, SPACING, iop=(0, 1, 0, 0, 0, -1))
    series = read_series(tmp_path / "dicom")[0]
    assert series.orientation == "PIR"  # columns -> P, rows -> I, slices -> R (normal -L)
    import_dicom(tmp_path / "dicom", tmp_path / "site")
    image = tmp_path / "site" / "imagesTs" / "case_000_0000.nii.gz"
    arr, spacing = load_nifti(image)
    assert spacing == pytest.approx((0.8, 0.7, 2.5), abs=1e-4)
    # RAS (z, y, x): z superior = rows reversed, y anterior = columns reversed, x right =
    # slices as stored (k runs along the normal, towards the patient's right)
    expected = vol[::-1, ::-1, :].transpose(1, 0, 2)  # (rows, columns, slices) = (z, y, x)
    np.testing.assert_array_equal(arr, expected)
