"""Image / label geometry check on the full affine.

Compared, in this order, on the files as stored (before any reorientation): orientation codes
(``nib.aff2axcodes``, e.g. ``LPS``), array shape, voxel spacing (within
:data:`SPACING_TOL_MM`), direction cosines (within :data:`DIRECTION_TOL`) and origin (within
:data:`ORIGIN_TOL_MM`). Any difference stops with ONE line naming both files and what
differs, e.g. ``img.nii.gz: geometry differs from label lab.nii.gz: orientation LPS vs RAS``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from common.data.errors import DataError, data_error
from common.data.nifti import NiftiFile, read_header

SPACING_TOL_MM = 1e-3
DIRECTION_TOL = 1e-3
ORIGIN_TOL_MM = 1e-2


def axcodes(affine: np.ndarray) -> str:
    """Orientation code of an affine, e.g. ``"RAS"`` or ``"LPS"``."""
    return "".join(str(c) for c in nib.aff2axcodes(affine))


def _directions(f: NiftiFile) -> np.ndarray:
    """(3, 3) unit direction cosines of the array axes (columns)."""
    rot = f.affine[:3, :3]
    return rot / np.maximum(np.linalg.norm(rot, axis=0, keepdims=True), 1e-12)


def geometry_differences(image: NiftiFile, label: NiftiFile) -> list[str]:
    """Human-readable differences between two volumes' geometry (empty when they agree)."""
    a, b = axcodes(image.affine), axcodes(label.affine)
    if a != b:
        return [f"orientation {a} vs {b}"]
    if image.data.shape != label.data.shape:
        return [f"shape {tuple(image.data.shape)} vs {tuple(label.data.shape)}"]
    diffs = []
    if max(abs(x - y) for x, y in zip(image.zooms, label.zooms, strict=True)) > SPACING_TOL_MM:
        zi, zl = (tuple(round(z, 4) for z in f.zooms) for f in (image, label))
        diffs.append(f"spacing {zi} vs {zl} mm")
    if np.abs(_directions(image) - _directions(label)).max() > DIRECTION_TOL:
        diffs.append("direction cosines differ by more than 1e-3")
    oi, ol = image.affine[:3, 3], label.affine[:3, 3]
    if np.abs(oi - ol).max() > ORIGIN_TOL_MM:
        diffs.append(f"origin {_mm(oi)} vs {_mm(ol)} mm")
    return diffs


def _mm(v: np.ndarray) -> tuple[float, ...]:
    """Plain floats rounded to 0.001 mm for messages."""
    return tuple(round(float(x), 3) for x in v)


def check_geometry(image: NiftiFile, label: NiftiFile) -> None:
    """Raise :class:`DataError` (one line, both files) when image and label geometry differ."""
    diffs = geometry_differences(image, label)
    if diffs:
        raise data_error(image.path,
                         f"geometry differs from label {label.path}: {'; '.join(diffs)}")


def check_pair_headers(image: Path | str, label: Path | str) -> None:
    """:func:`check_geometry` on the two files' headers only: a label (or prediction) whose
    header disagrees with its image's, e.g. a small gzip claiming 1200 x 1200 x 600 voxels, is
    refused before any voxel of either file is read."""
    check_geometry(read_header(image, first_channel=True), read_header(label))


__all__ = ["DataError", "axcodes", "check_geometry", "check_pair_headers",
           "geometry_differences"]
