"""``predict --format dicom-seg``: a predicted DICOM-SEG references its source series, carries
the label name and a colour, and reads back to the same mask; DICOM input also gives NIfTI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.dicom import read_series
from common.data.dicom_seg import read_seg
from common.data.errors import DataError
from common.data.nifti import read_nifti, save_nifti
from common.data.plan import Plan
from common.inference.dicom_seg import predict_any
from common.inference.predict import Predictor, batched
from tests.common._dicom_data import write_series

SHAPE = (20, 14, 5)  # (columns, rows, slices): wider than the 16 px canvas
SPACING = (0.6, 0.9, 3.0)


def _scan() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 20, SHAPE).astype(np.int16)
    organ = np.zeros(SHAPE, np.uint8)
    organ[14:19, 2:6, 1:4] = 1  # off-centre, near a corner
    vol[organ == 1] = 1000
    return vol, organ


def _predictor() -> Predictor:
    def logits(x: np.ndarray) -> np.ndarray:
        fg = 8.0 * (torch.from_numpy(x) - 2.0)
        return torch.cat([torch.zeros_like(fg), fg], dim=1).numpy()

    plan = Plan(size=16, spacing=(0.9, 0.6), norm="mri", labels=[1], label_name="prostate")
    return Predictor(plan, batched(logits), "oracle")


def test_dicom_seg_reads_back_to_the_same_mask(tmp_path: Path) -> None:
    import highdicom as hd

    vol, organ = _scan()
    write_series(tmp_path / "dicom", vol, SPACING)
    (out,) = predict_any(_predictor(), tmp_path / "dicom", tmp_path / "pred", fmt="dicom-seg")
    series = read_series(tmp_path / "dicom")[0]
    mask, names = read_seg(out, series)
    np.testing.assert_array_equal(mask, organ)
    assert names == {1: "prostate"}
    seg = hd.seg.segread(str(out))
    assert {uid for _, uid, _ in seg.get_source_image_uids()} == {series.uid}
    assert str(seg.StudyInstanceUID) == str(series.headers[0].StudyInstanceUID)
    colour = seg.SegmentSequence[0].RecommendedDisplayCIELabValue
    rgb = hd.color.CIELabColor.from_dicom_value(list(colour)).to_rgb()
    assert np.allclose(rgb, (230, 60, 60), atol=2)


def test_a_dicom_folder_also_predicts_nifti_on_the_series_grid(tmp_path: Path) -> None:
    vol, organ = _scan()
    write_series(tmp_path / "dicom", vol, SPACING)
    (out,) = predict_any(_predictor(), tmp_path / "dicom", tmp_path / "pred")
    mask = read_nifti(out, allow_empty=True)
    np.testing.assert_array_equal(mask.data, organ)  # (column, row, slice), series' affine
    assert mask.zooms == pytest.approx(SPACING)
    assert "".join(__import__("nibabel").aff2axcodes(mask.affine)) == "LPS"


def test_dicom_seg_needs_the_dicom_source(tmp_path: Path) -> None:
    save_nifti(tmp_path / "in" / "a.nii.gz", np.ones((3, 16, 16), np.float32), (3.0, 1.0, 1.0))
    with pytest.raises(DataError, match="--format dicom-seg needs the DICOM source"):
        predict_any(_predictor(), tmp_path / "in", tmp_path / "pred", fmt="dicom-seg")
