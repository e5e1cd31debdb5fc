"""RTSTRUCT in (pydicom): closed planar ROI contours rasterised onto an image series' grid.

highdicom reads DICOM-SEG but has no RTSTRUCT reader, and rt-utils is not a dependency, so the
structure set is read with pydicom and each ROI is filled here. A contour's points
(``ContourData``: x, y, z in patient LPS mm) are mapped to voxel indices through the inverse of
the series' LPS affine (:mod:`common.data.dicom`: ``ImagePositionPatient``,
``ImageOrientationPatient``, ``PixelSpacing`` and the slice step), giving a polygon in
(column ``i``, row ``j``) on slice ``k``. A voxel belongs to the polygon when its centre lies
inside it **or on its outline** (:class:`matplotlib.path.Path`, the union of the point test
with the outline grown and shrunk by :data:`EDGE_TOL` voxel, so the result does not depend on
the contour's winding). Several contours of one ROI on one slice combine by the **even-odd
rule** (each toggles the voxels it covers: a contour inside another is a hole).

A contour more than :data:`SLICE_TOL` of a slice spacing away from every slice plane (or
outside the grid) is skipped and counted; ROIs that are not ``CLOSED_PLANAR`` (points, open
polylines), that have no contour, or whose frame of reference differs from the series' are
skipped with the reason. Label values are 1, 2, ... in the structure set's ROI order; where
ROIs overlap, the later one wins (the overlap is counted in the ROI's record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.data.dicom import LPS_TO_RAS, Series
from common.data.errors import data_error

SLICE_TOL = 0.25  # a contour may sit this fraction of a slice spacing off the slice plane
EDGE_TOL = 1e-3  # voxels: outline tolerance of the point-in-polygon test


@dataclass
class RoiMasks:
    """An RTSTRUCT on a series' grid. ``labels``: (columns, rows, slices) uint8, 0 = none,
    ``v`` = ROI ``names[v]``; ``rois``: one record per ROI of the structure set (name, number,
    contours used / skipped, voxels, ``status`` "imported" or "skipped: <why>")."""

    labels: np.ndarray
    names: dict[int, str]
    rois: list[dict[str, Any]] = field(default_factory=list)


def read_dataset(path: Path) -> Any:
    """The RTSTRUCT dataset at ``path``; anything else is a one-line DataError."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    if str(ds.get("Modality", "")) != "RTSTRUCT":
        raise data_error(path, "not an RTSTRUCT object")
    return ds


def referenced_series_uid(ds: Any) -> str | None:
    """The SeriesInstanceUID the structure set names (Referenced Frame of Reference ->
    RT Referenced Study -> RT Referenced Series); None when it names none."""
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if "SeriesInstanceUID" in series:
                    return str(series.SeriesInstanceUID)
    return None


def contour_image_uids(ds: Any) -> set[str]:
    """Every SOPInstanceUID the contours (or the referenced series) cite."""
    out: set[str] = set()
    for roi in ds.get("ROIContourSequence", []):
        for contour in roi.get("ContourSequence", []):
            out |= {str(r.ReferencedSOPInstanceUID)
                    for r in contour.get("ContourImageSequence", [])}
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                out |= {str(r.ReferencedSOPInstanceUID)
                        for r in series.get("ContourImageSequence", [])}
    return out


def match_series(ds: Any, images: list[Series]) -> Series | None:
    """The image series the structure set was drawn on: the one it names, else the one whose
    slices its contours cite, else the only one in its frame of reference."""
    uid = referenced_series_uid(ds)
    named = [s for s in images if s.uid == uid]
    if named:
        return named[0]
    cited = contour_image_uids(ds)
    hits = [s for s in images if cited & set(s.sop_uids)]
    if len(hits) == 1:
        return hits[0]
    frames = {str(f.FrameOfReferenceUID)
              for f in ds.get("ReferencedFrameOfReferenceSequence", [])}
    same = [s for s in images if str(s.headers[0].get("FrameOfReferenceUID", "")) in frames]
    return same[0] if len(same) == 1 else None


def to_voxels(points_mm: np.ndarray, series: Series) -> np.ndarray:
    """(P, 3) patient LPS mm -> (P, 3) continuous (column, row, slice) indices of ``series``."""
    assert series.affine is not None
    lps = LPS_TO_RAS @ series.affine  # LPS_TO_RAS is its own inverse
    homog = np.c_[points_mm, np.ones(len(points_mm))]
    return (np.linalg.inv(lps) @ homog.T).T[:, :3]


def fill_polygon(ij: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(columns, rows) bool: voxels whose centre is inside or on the polygon ``ij`` (P, 2)."""
    from matplotlib.path import Path as MplPath

    out = np.zeros(shape, bool)
    lo = np.maximum(np.floor(ij.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(ij.max(axis=0)).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return out
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
    pts = np.c_[ii.ravel(), jj.ravel()].astype(float)
    path = MplPath(ij)
    inside = (path.contains_points(pts, radius=EDGE_TOL)
              | path.contains_points(pts, radius=-EDGE_TOL))
    out[lo[0]:hi[0], lo[1]:hi[1]] = inside.reshape(ii.shape)
    return out


def _roi_mask(contours: list[Any], series: Series) -> tuple[np.ndarray, int, int, str]:
    """(mask, contours used, contours skipped, problem) of one ROI's contour sequence."""
    shape = series.shape
    mask = np.zeros(shape, bool)
    used = skipped = 0
    kinds = {str(c.get("ContourGeometricType", "")) for c in contours}
    if kinds - {"CLOSED_PLANAR"}:
        return mask, 0, len(contours), f"contour type {'/'.join(sorted(kinds))} (only " \
                                        "CLOSED_PLANAR is filled)"
    for contour in contours:
        pts = np.asarray([float(v) for v in contour.ContourData], float).reshape(-1, 3)
        ijk = to_voxels(pts, series)
        k = float(np.mean(ijk[:, 2]))
        kk = int(round(k))
        flat = np.ptp(ijk[:, 2]) <= 2 * SLICE_TOL
        if len(pts) < 3 or not flat or abs(k - kk) > SLICE_TOL or not 0 <= kk < shape[2]:
            skipped += 1
            continue
        mask[:, :, kk] ^= fill_polygon(ijk[:, :2], shape[:2])
        used += 1
    return mask, used, skipped, ""


def read_rtstruct(ds: Any, series: Series) -> RoiMasks:
    """Every ROI of the RTSTRUCT dataset ``ds`` on ``series``' grid (module doc)."""
    frame = str(series.headers[0].get("FrameOfReferenceUID", ""))
    contours = {int(r.ReferencedROINumber): list(r.get("ContourSequence", []))
                for r in ds.get("ROIContourSequence", [])}
    labels = np.zeros(series.shape, np.uint8)
    names: dict[int, str] = {}
    rois: list[dict[str, Any]] = []
    for roi in ds.get("StructureSetROISequence", []):
        number, name = int(roi.ROINumber), str(roi.get("ROIName", "")).strip() or "roi"
        record: dict[str, Any] = {"roi": name, "number": number}
        rois.append(record)
        roi_frame = str(roi.get("ReferencedFrameOfReferenceUID", frame))
        if roi_frame != frame:
            record["status"] = "skipped: another frame of reference than the image series"
            continue
        if not contours.get(number):
            record["status"] = "skipped: no contour"
            continue
        mask, used, missed, problem = _roi_mask(contours[number], series)
        record.update(contours=used, contours_skipped=missed, voxels=int(mask.sum()))
        if problem or not mask.any():
            record["status"] = f"skipped: {problem or 'no contour on a slice of the series'}"
            continue
        value = len(names) + 1
        record["overlap_voxels"] = int((labels[mask] != 0).sum())
        labels[mask] = value
        names[value] = name
        record["status"] = "imported"
    return RoiMasks(labels, names, rois)


__all__ = ["EDGE_TOL", "SLICE_TOL", "RoiMasks", "contour_image_uids", "fill_polygon",
           "match_series", "read_dataset", "read_rtstruct", "referenced_series_uid",
           "to_voxels"]
