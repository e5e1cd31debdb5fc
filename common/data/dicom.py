"""DICOM series discovery and geometry (pydicom): what ``import-dicom`` and ``predict`` read.

A folder (searched recursively) is grouped into series by ``SeriesInstanceUID``. For an image
series the slices are sorted along the slice normal (the cross product of the two
``ImageOrientationPatient`` directions), and its geometry is computed the way a NIfTI affine is:
array axes (column ``i``, row ``j``, slice ``k``) map to patient LPS millimetres by

    p = IPP_0 + i * dc * F_row + j * dr * F_col + k * step

(``PixelSpacing = (dr, dc)``, ``step``: the mean vector between consecutive slice positions),
then LPS -> RAS (``diag(-1, -1, 1)``) for NIfTI. A gap between slice positions larger than 1.5x
the median spacing is reported as missing slices (the volume is not interpolated). DICOM-SEG
(``Modality = SEG``) and RTSTRUCT objects are listed apart from image series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.data.errors import data_error

GAP_FACTOR = 1.5
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_dicom(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` at byte 128)."""
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path, limit: int | None = None) -> list[Path]:
    """DICOM files under ``folder`` (recursive, sorted); stops after ``limit`` when given."""
    out = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        if is_dicom(path):
            out.append(path)
            if limit is not None and len(out) >= limit:
                break
    return out


def has_dicom(folder: Path, max_files: int = 200) -> bool:
    """Whether one of the first ``max_files`` files under ``folder`` is DICOM (cheap: for the
    hints of ``check`` and ``predict``)."""
    if not Path(folder).is_dir():
        return False
    for n, path in enumerate(p for p in Path(folder).rglob("*") if p.is_file()):
        if n >= max_files:
            return False
        if is_dicom(path):
            return True
    return False


DICOM_HINT = ("it holds DICOM files: convert them first with `site-node import-dicom --in "
              "DICOM_DIR --out SITE_DIR` (docs/DATA.md, DICOM in)")


@dataclass
class Series:
    """One DICOM series. ``files``: image slices sorted along the normal (or the single
    SEG/RTSTRUCT file). ``affine``: (4, 4) RAS affine of the (column, row, slice) array;
    ``spacing``: (column, row, slice) mm; ``missing``: count of slices missing in gaps."""

    uid: str
    modality: str
    description: str
    files: list[Path]
    headers: list[Any] = field(repr=False, default_factory=list)
    affine: np.ndarray | None = None
    spacing: tuple[float, float, float] | None = None
    missing: int = 0

    @property
    def is_image(self) -> bool:
        """An image series (not a SEG or RTSTRUCT object)."""
        return self.modality not in ("SEG", "RTSTRUCT")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(columns, rows, slices) of the image array."""
        h = self.headers[0]
        return int(h.Columns), int(h.Rows), len(self.files)

    @property
    def orientation(self) -> str:
        """Axis codes of the array in RAS terms (nibabel), e.g. ``"LPS"``."""
        import nibabel as nib

        assert self.affine is not None
        return "".join(str(c) for c in nib.aff2axcodes(self.affine))

    @property
    def sop_uids(self) -> list[str]:
        """SOPInstanceUIDs of the slices, in array order."""
        return [str(h.SOPInstanceUID) for h in self.headers]


def read_series(folder: Path) -> list[Series]:
    """Every series under ``folder`` (headers only), image series with their geometry."""
    import pydicom

    groups: dict[str, list[tuple[Path, Any]]] = {}
    for path in dicom_files(folder):
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError) as exc:
            raise data_error(path, f"cannot read DICOM ({exc})") from None
        groups.setdefault(str(ds.get("SeriesInstanceUID", path.parent)), []).append((path, ds))
    out = []
    for uid, items in groups.items():
        first = items[0][1]
        series = Series(uid, str(first.get("Modality", "OT")),
                        str(first.get("SeriesDescription", "")),
                        [p for p, _ in items], [d for _, d in items])
        if series.is_image:
            _geometry(series)
        out.append(series)
    return sorted(out, key=lambda s: (not s.is_image, s.description, s.uid))


def _geometry(series: Series) -> None:
    """Sort the slices along the normal and set affine, spacing and missing slices."""
    first = series.headers[0]
    for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if tag not in first:
            raise data_error(series.files[0], f"image series {series.uid} has no {tag}: cannot "
                                              "place it in patient space")
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    f_row, f_col = iop[:3], iop[3:]
    normal = np.cross(f_row, f_col)
    pos = [np.asarray([float(v) for v in h.ImagePositionPatient]) for h in series.headers]
    order = np.argsort([float(p @ normal) for p in pos], kind="stable")
    series.files = [series.files[i] for i in order]
    series.headers = [series.headers[i] for i in order]
    pos = [pos[i] for i in order]
    dr, dc = (float(v) for v in first.PixelSpacing)
    step, dz, missing = _slice_step(pos, normal, first)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = f_row * dc, f_col * dr, step, pos[0]
    series.affine = LPS_TO_RAS @ lps
    series.spacing = (dc, dr, dz)
    series.missing = missing


def _slice_step(pos: list[np.ndarray], normal: np.ndarray, first: Any
                ) -> tuple[np.ndarray, float, int]:
    """(step vector, slice spacing mm, missing slice count) from the sorted positions."""
    if len(pos) < 2:
        dz = float(first.get("SliceThickness", 1.0) or 1.0)
        return normal * dz, dz, 0
    gaps = np.asarray([float((b - a) @ normal) for a, b in zip(pos, pos[1:], strict=False)])
    dz = float(np.median(gaps))
    if dz <= 0:
        raise data_error(Path(str(first.get("SeriesInstanceUID", "series"))),
                         "two slices share a position: not one volume")
    missing = int(sum(max(0, round(g / dz) - 1) for g in gaps if g > GAP_FACTOR * dz))
    regular = [b - a for a, b, g in zip(pos, pos[1:], gaps, strict=False) if g <= GAP_FACTOR * dz]
    step = np.mean(regular, axis=0) if regular else normal * dz
    return step, dz, missing


def series_array(series: Series) -> np.ndarray:
    """(columns, rows, slices) float32 voxel values (modality LUT applied: e.g. HU for CT)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    planes = []
    for path in series.files:
        ds = pydicom.dcmread(str(path))
        planes.append(np.asarray(apply_modality_lut(ds.pixel_array, ds), np.float32).T)
    return np.stack(planes, axis=-1)


def describe(series: Series) -> str:
    """One line for the import report."""
    if not series.is_image:
        return f"{series.modality} object {series.uid} ({series.description or 'no description'})"
    spacing = " x ".join(f"{v:g}" for v in series.spacing or ())
    gap = f", {series.missing} missing slice(s)" if series.missing else ", no missing slices"
    return (f"{series.modality} series {series.uid} ({series.description or 'no description'}):"
            f" {' x '.join(str(n) for n in series.shape)} voxels, {spacing} mm, orientation "
            f"{series.orientation}{gap}")


__all__ = ["DICOM_HINT", "Series", "describe", "dicom_files", "has_dicom", "is_dicom",
           "read_series", "series_array"]
