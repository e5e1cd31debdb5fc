"""``predict`` warns when it cannot be trusted: an int8 runtime the model card measured below the
agreement gate, a scan whose intensities do not match the model's modality; overlays are drawn
in radiological convention on the scan's own grid."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from common.data.nifti import read_nifti, save_nifti
from common.data.plan import Plan
from common.inference.evaluate import radiological
from common.inference.predict import warn_agreement, warn_modality


def test_int8_below_the_agreement_gate_warns(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    card = {"runtimes": {"onnx-int8": {"agreement": 0.888}, "onnx": {"agreement": 0.9999}}}
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    with caplog.at_level(logging.WARNING, logger="common.inference.predict"):
        warn_agreement(tmp_path, "onnx")
        assert not caplog.records
        warn_agreement(tmp_path, "onnx-int8")
    (record,) = caplog.records
    assert "onnx-int8 agreed with fp32 on only 88.8 % of pixels (gate 99.5 %)" in \
        record.getMessage()


@pytest.mark.parametrize("norm,values,warns", [
    ("mri", (-1000.0, 1500.0), "trained on MRI"),  # a CT in HU through an MRI model
    ("ct", (0.0, 800.0), "trained on CT"),  # an MR through a CT model
    ("mri", (0.0, 800.0), None),
    ("ct", (-1000.0, 1500.0), None),
])
def test_modality_mismatch_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture, norm: str,
                                 values: tuple[float, float], warns: str | None) -> None:
    lo, hi = values
    vol = np.linspace(lo, hi, 4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    save_nifti(tmp_path / "x.nii.gz", vol, (3.0, 1.0, 1.0))
    with caplog.at_level(logging.WARNING, logger="common.inference.predict"):
        warn_modality(Plan(size=8, norm=norm), read_nifti(tmp_path / "x.nii.gz"))  # type: ignore[arg-type]
    messages = [r.getMessage() for r in caplog.records]
    assert (warns is None and not messages) or (warns is not None and warns in messages[0])


def test_radiological_view_puts_anterior_up_and_patient_right_on_the_left() -> None:
    # canonical RAS (y, x): y grows anterior, x grows to the patient's right
    sl = np.array([[0, 1], [2, 3]])  # [y=0 (posterior): left, right], [y=1 (anterior): ...]
    view = radiological(sl)
    assert view[0, 0] == 3  # top row = anterior; left column = patient's right
    assert view.tolist() == [[3, 2], [1, 0]]
