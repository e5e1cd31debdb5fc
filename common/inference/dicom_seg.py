"""``predict`` on DICOM: read image series directly, write NIfTI or DICOM-SEG.

:func:`predict_any` is what both roles' ``predict`` commands call: a folder holding NIfTI goes
to :func:`common.inference.predict.predict_folder`; a folder holding DICOM (and no NIfTI), or any
``--format dicom-seg`` request, to :func:`predict_dicom`, which reads every complete image
series (:mod:`common.data.dicom` geometry), segments it over its whole field of view and writes
``series_NNN.nii.gz`` on the series' grid or ``series_NNN.seg.dcm``: a DICOM-SEG referencing the
series' slices, with the plan's label name and a display colour
(:func:`common.data.dicom_seg.write_seg`), which Slicer, OHIF and PACS viewers overlay.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from common.data.errors import data_error
from common.inference.predict import Predictor, predict_case, predict_folder, warn_modality

log = logging.getLogger(__name__)
FORMATS = ("nifti", "dicom-seg")


def predict_any(pred: Predictor, in_dir: Path | str, out_dir: Path | str,
                overlays: bool = False, fmt: str = "nifti") -> list[Path]:
    """NIfTI folder -> :func:`~common.inference.predict.predict_folder`; DICOM ->
    :func:`predict_dicom`."""
    from common.data.dicom import has_dicom

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if fmt not in FORMATS:
        raise data_error(out_dir, f"unknown output format {fmt!r}; choose one of {FORMATS}")
    dicom_in = in_dir.is_dir() and not _has_nifti(in_dir) and has_dicom(in_dir)
    if fmt == "dicom-seg" or dicom_in:
        return predict_dicom(pred, in_dir, out_dir, fmt)
    return predict_folder(pred, in_dir, out_dir, overlays=overlays)


def _has_nifti(folder: Path) -> bool:
    return any(p.name.endswith((".nii", ".nii.gz")) for p in folder.iterdir() if p.is_file())


def predict_dicom(pred: Predictor, in_dir: Path, out_dir: Path, fmt: str = "nifti"
                  ) -> list[Path]:
    """Segment every complete image series under ``in_dir``; returns the written files."""
    from common.data.dicom import read_series
    from common.data.dicom_seg import write_seg
    from common.data.native import save_native_mask

    if not in_dir.is_dir():
        raise data_error(in_dir, "input folder not found")
    series = [s for s in read_series(in_dir) if s.is_image and not s.missing]
    if not series:
        raise data_error(in_dir, "no complete DICOM image series to segment"
                                 + ("" if fmt == "nifti" else " (--format dicom-seg needs the "
                                    "DICOM source series as --in)"))
    log.info("predicting %d DICOM series from %s with %s", len(series), in_dir, pred.source)
    written = []
    for i, s in enumerate(series):
        f = series_file(s)
        warn_modality(pred.plan, f)
        case, mask = predict_case(pred, f)
        if fmt == "dicom-seg":
            out = write_seg(mask, s, out_dir / f"series_{i:03d}.seg.dcm",
                            {1: pred.plan.label_name or "foreground"})
        else:
            out = save_native_mask(mask, case, out_dir / f"series_{i:03d}.nii.gz")
        log.info("%s -> %s", s.description or s.uid, out)
        written.append(out)
    return written


def series_file(s: Any) -> Any:
    """A DICOM image series as a :class:`~common.data.nifti.NiftiFile`: (column, row, slice)
    float32 voxels, the series' RAS affine and spacing."""
    import nibabel as nib

    from common.data.dicom import series_array
    from common.data.nifti import NiftiFile

    data = series_array(s)
    img = nib.Nifti1Image(data, s.affine)
    img.header.set_zooms(s.spacing)
    return NiftiFile(Path(s.files[0]), data, s.affine, img.header, s.spacing)


__all__ = ["FORMATS", "predict_any", "predict_dicom", "series_file"]
