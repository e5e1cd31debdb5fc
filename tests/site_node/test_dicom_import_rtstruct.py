"""``site-node import-dicom`` with RTSTRUCT ground truth: closed planar contours are filled on the
referenced series' grid (outline included, holes by the even-odd rule), ROI names become label
values, and the label NIfTI lands on exactly the dcm2niix image's grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.data.layout import discover_dataset
from common.data.nifti import load_nifti
from common.data.rtstruct import fill_polygon
from site_node.dicom_import import import_dicom
from tests.common._dicom_data import volume, write_rtstruct, write_series

SPACING = (0.7, 0.8, 2.5)  # (column, row, slice) mm


def _square(i0: float, i1: float, j0: float, j1: float, k: float, reverse: bool = False
            ) -> np.ndarray:
    """(4, 3) voxel-index corners of an axis-aligned square on slice ``k``."""
    pts = [(i0, j0, k), (i1, j0, k), (i1, j1, k), (i0, j1, k)]
    return np.asarray(pts[::-1] if reverse else pts, float)


def _rois() -> dict[str, list[tuple[str, np.ndarray]]]:
    return {
        # corners on voxel centres: columns 2..5, rows 3..6 inclusive, on slices 1, 2, 3
        "Prostate": [("CLOSED_PLANAR", _square(2, 5, 3, 6, k)) for k in (1, 2, 3)],
        # slice 4: 5 x 5 outer square (columns 6..10, rows 1..5) with a hole around the single
        # centre (8, 3), drawn with the opposite winding
        "Rectum": [("CLOSED_PLANAR", _square(6, 10, 1, 5, 4)),
                   ("CLOSED_PLANAR", _square(7.5, 8.5, 2.5, 3.5, 4, reverse=True))],
        "Marker": [("POINT", np.asarray([[1.0, 1.0, 1.0]]))],
        "Empty": [],
        # halfway between slices 0 and 1: no slice plane, nothing filled
        "Between": [("CLOSED_PLANAR", _square(1, 3, 1, 3, 0.5))],
    }


def _expected(shape: tuple[int, int, int]) -> np.ndarray:
    """(columns, rows, slices): Prostate = 1, Rectum = 2, hand-derived from :func:`_rois`."""
    m = np.zeros(shape, np.uint8)
    m[2:6, 3:7, 1:4] = 1
    m[6:11, 1:6, 4] = 2
    m[8, 3, 4] = 0
    return m


def test_rtstruct_contours_become_the_label_on_the_image_grid(tmp_path: Path) -> None:
    vol = volume()  # (12 columns, 10 rows, 6 slices)
    images = write_series(tmp_path / "dicom" / "ct", vol, SPACING, modality="CT",
                          description="pelvis")
    write_rtstruct(tmp_path / "dicom" / "rt" / "rs.dcm", images, _rois(), SPACING)
    report = import_dicom(tmp_path / "dicom", tmp_path / "site")
    assert report.labels == {"Prostate": 1, "Rectum": 2} and report.skipped == []
    info = discover_dataset(tmp_path / "site")
    assert info.labels == {"0": "background", "1": "Prostate", "2": "Rectum"}
    assert info.cases[0].label is not None
    lab, _ = load_nifti(info.cases[0].label)  # canonical RAS (z, y, x)
    expected = _expected(vol.shape)
    assert int((expected == 1).sum()) == 4 * 4 * 3 and int((expected == 2).sum()) == 24
    # axial LPS series: columns run to patient-left, rows to posterior -> both flip in RAS
    np.testing.assert_array_equal(lab, expected[::-1, ::-1, :].transpose(2, 1, 0))
    text = json.loads((tmp_path / "site" / "import_report.json").read_text())
    status = {r["roi"]: r["status"] for r in text["rois"]}
    assert status["Prostate"] == status["Rectum"] == "imported"
    assert status["Marker"].startswith("skipped: contour type POINT")
    assert status["Empty"] == "skipped: no contour"
    assert status["Between"] == "skipped: no contour on a slice of the series"
    voxels = {r["roi"]: r.get("voxels") for r in text["rois"]}
    assert voxels["Prostate"] == 48 and voxels["Rectum"] == 24
    assert "case_000: ROI 'Marker' skipped: contour type POINT" in "\n".join(report.lines())


def test_contours_on_a_sagittal_series_land_on_its_grid(tmp_path: Path) -> None:
    """Sagittal (columns posterior, rows inferior, slices towards the patient's right): the
    contour's patient coordinates go through the series' own orientation."""
    vol = volume()
    images = write_series(tmp_path / "dicom" / "sag", vol, SPACING, iop=(0, 1, 0, 0, 0, -1))
    write_rtstruct(tmp_path / "dicom" / "rs.dcm", images,
                   {"gland": [("CLOSED_PLANAR", _square(2, 5, 3, 6, k)) for k in (1, 4)]},
                   SPACING)
    import_dicom(tmp_path / "dicom", tmp_path / "site")
    lab, _ = load_nifti(tmp_path / "site" / "labelsTr" / "case_000.nii.gz")
    expected = np.zeros(vol.shape, np.uint8)
    expected[2:6, 3:7, [1, 4]] = 1
    # RAS (z, y, x) = (rows reversed, columns reversed, slices), as the image itself
    np.testing.assert_array_equal(lab, expected[::-1, ::-1, :].transpose(1, 0, 2))


def test_an_rtstruct_naming_only_its_frame_of_reference_is_matched(tmp_path: Path) -> None:
    vol = volume(seed=2)
    images = write_series(tmp_path / "dicom" / "mr", vol, SPACING)
    write_rtstruct(tmp_path / "dicom" / "rs.dcm", images,
                   {"gland": [("CLOSED_PLANAR", _square(2, 5, 3, 6, 2))]}, SPACING,
                   reference_series=False)
    report = import_dicom(tmp_path / "dicom", tmp_path / "site")
    assert report.labels == {"gland": 1}
    lab, _ = load_nifti(tmp_path / "site" / "labelsTr" / "case_000.nii.gz")
    expected = np.zeros(vol.shape, np.uint8)
    expected[2:6, 3:7, 2] = 1
    np.testing.assert_array_equal(lab, expected[::-1, ::-1, :].transpose(2, 1, 0))


def test_an_rtstruct_of_another_frame_is_skipped_and_the_image_has_no_label(
        tmp_path: Path) -> None:
    images = write_series(tmp_path / "dicom" / "a", volume(), SPACING)
    other = write_series(tmp_path / "other", volume(seed=3), SPACING)  # not imported
    write_rtstruct(tmp_path / "dicom" / "rs.dcm", other,
                   {"gland": [("CLOSED_PLANAR", _square(2, 5, 3, 6, 2))]}, SPACING)
    report = import_dicom(tmp_path / "dicom", tmp_path / "site")
    assert len(images) == 6 and report.labels == {}
    assert report.cases[0]["image"] == "imagesTs/case_000_0000.nii.gz"
    assert len(report.skipped) == 1 and "RTSTRUCT: none of the complete image series" in \
        report.skipped[0]


def test_fill_polygon_includes_the_outline_whatever_the_winding() -> None:
    tri = np.asarray([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])  # right triangle, legs on the axes
    for pts in (tri, tri[::-1]):
        got = fill_polygon(pts, (6, 6))
        # voxel (i, j) is in when i + j <= 4 (hypotenuse included): 15 voxels
        ii, jj = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
        np.testing.assert_array_equal(got, ii + jj <= 4)


def test_an_rtstruct_without_a_fillable_roi_gives_no_ground_truth(tmp_path: Path) -> None:
    images = write_series(tmp_path / "dicom" / "mr", volume(), SPACING)
    write_rtstruct(tmp_path / "dicom" / "rs.dcm", images,
                   {"Marker": [("POINT", np.asarray([[1.0, 1.0, 1.0]]))]}, SPACING)
    report = import_dicom(tmp_path / "dicom", tmp_path / "site")
    assert report.labels == {} and "label" not in report.cases[0]
    assert report.cases[0]["image"] == "imagesTs/case_000_0000.nii.gz"
    assert len(report.skipped) == 1 and "no ROI could be filled on case_000" in report.skipped[0]
    assert report.rois[0]["status"].startswith("skipped: contour type POINT")
