"""Synthetic DICOM series for the DICOM import / DICOM-SEG tests (pydicom writers; no real
patient data: every identifier is made up)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SOP_CLASS = {"MR": "1.2.840.10008.5.1.4.1.1.4", "CT": "1.2.840.10008.5.1.4.1.1.2"}


def volume(shape: tuple[int, int, int] = (12, 10, 6), seed: int = 0) -> np.ndarray:
    """(columns, rows, slices) int16 with a distinct value per voxel position pattern."""
    rng = np.random.default_rng(seed)
    c, r, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (100 * k + 10 * r + c + rng.integers(0, 3, shape)).astype(np.int16)


def write_series(folder: Path, vol: np.ndarray, spacing: tuple[float, float, float],
                 iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
                 origin: tuple[float, float, float] = (-30.0, -20.0, 10.0),
                 modality: str = "MR", description: str = "t2_tse_tra",
                 study: str | None = None, frame: str | None = None,
                 skip: tuple[int, ...] = ()) -> list[Dataset]:
    """Write ``vol`` (columns, rows, slices) as one slice file per k (names in reverse order,
    so sorting must use the positions); ``skip``: slice indices left out (missing slices)."""
    dc, dr, dz = spacing
    f_row, f_col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(f_row, f_col)
    study, frame, series = study or generate_uid(), frame or generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(vol.shape[2]):
        if k in skip:
            continue
        ds = _slice(vol[:, :, k].T, modality, study, frame, series, description)
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * dz * normal]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = [dr, dc]
        ds.SliceThickness = dz
        ds.InstanceNumber = k + 1
        ds.save_as(str(folder / f"IM{vol.shape[2] - k:04d}.dcm"), enforce_file_format=True)
        out.append(ds)
    return out


def _slice(plane: np.ndarray, modality: str, study: str, frame: str, series: str,
           description: str) -> Dataset:
    """One slice: ``plane`` (rows, columns) int16."""
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SOP_CLASS[modality], sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SOP_CLASS[modality], sop, modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^One", "P1", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
    ds.ReferringPhysicianName, ds.Manufacturer, ds.SeriesNumber = "", "synthetic", 1
    ds.SeriesDescription = description
    ds.Rows, ds.Columns = int(plane.shape[0]), int(plane.shape[1])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.PixelData = np.ascontiguousarray(plane, np.int16).tobytes()
    return ds


RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def voxel_to_lps(ijk: np.ndarray, image: Dataset, spacing: tuple[float, float, float]
                 ) -> np.ndarray:
    """(P, 3) (column, row, slice) indices -> (P, 3) patient LPS mm on the series whose first
    slice (k = 0) is ``image`` (as :func:`write_series` wrote it)."""
    iop = np.asarray([float(v) for v in image.ImageOrientationPatient])
    f_row, f_col = iop[:3], iop[3:]
    origin = np.asarray([float(v) for v in image.ImagePositionPatient])
    dc, dr, dz = spacing
    ijk = np.asarray(ijk, float)
    return (origin + ijk[:, :1] * dc * f_row + ijk[:, 1:2] * dr * f_col
            + ijk[:, 2:] * dz * np.cross(f_row, f_col))


def write_rtstruct(path: Path, images: list[Dataset],
                   rois: dict[str, list[tuple[str, np.ndarray]]],
                   spacing: tuple[float, float, float],
                   reference_series: bool = True) -> Dataset:
    """An RTSTRUCT on the series ``images`` (slice k = 0 first, as :func:`write_series` returns
    them): ``rois`` name -> [(geometric type, (P, 3) contour points in voxel (column, row,
    slice) indices)], converted to patient mm. ``reference_series``: name the series in the
    Referenced Frame of Reference Sequence (else only the frame of reference)."""
    first = images[0]
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTSTRUCT_CLASS, sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RTSTRUCT_CLASS, sop, "RTSTRUCT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = first.StudyInstanceUID, generate_uid()
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PatientName, ds.PatientID, ds.SeriesDescription = "Phantom^One", "P1", "structures"
    ds.StructureSetLabel = "synthetic"
    contour_images = [_ref(im) for im in images]
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    if reference_series:
        series = Dataset()
        series.SeriesInstanceUID = first.SeriesInstanceUID
        series.ContourImageSequence = contour_images
        study = Dataset()
        study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        study.ReferencedSOPInstanceUID = first.StudyInstanceUID
        study.RTReferencedSeriesSequence = [series]
        frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber, item.ROIDisplayColor = number, [255, 0, 0]
        item.ContourSequence = []
        for kind, ijk in contours:
            c = Dataset()
            c.ContourGeometricType, c.NumberOfContourPoints = kind, len(ijk)
            c.ContourData = [round(float(v), 4) for v in voxel_to_lps(ijk, first, spacing).ravel()]
            item.ContourSequence.append(c)
        ds.ROIContourSequence.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return ds


def _ref(image: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = image.SOPClassUID
    ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
    return ref
