"""NIfTI reading and writing in axial-first (D, H, W) = (z, y, x) order.

nibabel stores arrays as (x, y, z); we transpose to (z, y, x) so that ``vol[k]`` is axial slice
``k``. Spacing is returned as (sz, sy, sx) in millimetres, rounded to 6 decimals because the
NIfTI header stores zooms as float32 (0.6 would otherwise come back as 0.6000000238).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from common.data.errors import data_error

Spacing = tuple[float, float, float]
_READ_ERRORS = (
    nib.filebasedimages.ImageFileError,
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    gzip.BadGzipFile,
)


def _read_xyz(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read the raw (x, y, z[, t]) array and header zooms; any decoding failure -> DataError."""
    if not path.is_file():
        raise data_error(path, "file not found")
    try:
        img: Any = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except _READ_ERRORS as exc:
        raise data_error(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    return data, zooms


def _check_array(path: Path, data: np.ndarray, allow_empty: bool,
                 first_channel: bool = False) -> np.ndarray:
    """Validate a raw array: 3D (or 4D with one frame, or any 4D with ``first_channel``),
    finite, non-empty. Returns (x, y, z)."""
    if data.ndim == 4 and (data.shape[3] == 1 or first_channel):
        data = data[..., 0]
    if data.ndim != 3:
        raise data_error(path, f"expected a 3D volume, got shape {tuple(data.shape)}")
    if data.size == 0:
        raise data_error(path, f"empty volume of shape {tuple(data.shape)}")
    if not np.all(np.isfinite(data)):
        raise data_error(path, "volume contains NaN or Inf voxels")
    if not allow_empty and not np.any(data):
        raise data_error(path, "volume is all zeros")
    return data


def load_nifti(path: Path | str, allow_empty: bool = False,
               first_channel: bool = False) -> tuple[np.ndarray, Spacing]:
    """Load a 3D NIfTI file (``first_channel``: a 4D multi-channel image gives channel 0, as
    ``_0000`` of the nnU-Net naming, e.g. T2 of MSD Task05's T2 + ADC).

    Returns ``(array, spacing)``: ``array`` float32 of shape (D, H, W) = (z, y, x) and
    ``spacing`` = (sz, sy, sx) in mm. Raises :class:`DataError` (message starts with the path)
    for a missing, corrupt or truncated file, a non-3D array (4D with a last dim of 1 is
    accepted), NaN/Inf voxels, or an empty / all-zero volume (unless ``allow_empty``).
    """
    path = Path(path)
    data, zooms = _read_xyz(path)
    data = _check_array(path, data, allow_empty, first_channel)
    sx, sy, sz = (round(z, 6) for z in zooms[:3])
    return np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32), (sz, sy, sx)


def save_nifti(
    path: Path | str,
    array_dhw: npt.ArrayLike,
    spacing: Spacing,
    dtype: npt.DTypeLike = np.float32,
) -> None:
    """Write ``array_dhw`` (D, H, W) = (z, y, x) with a diagonal affine of ``spacing`` (sz, sy, sx).

    Inverse of :func:`load_nifti`. ``dtype`` is the on-disk data type (e.g. float32, uint8).
    """
    arr = np.asarray(array_dhw)
    if arr.ndim != 3:
        raise data_error(path, f"save_nifti expects a (D, H, W) array, got {arr.shape}")
    sz, sy, sx = spacing
    affine = np.diag([sx, sy, sz, 1.0]).astype(np.float64)
    xyz = np.ascontiguousarray(arr.transpose(2, 1, 0)).astype(dtype)
    img = nib.Nifti1Image(xyz, affine)
    img.header.set_data_dtype(dtype)
    img.header.set_zooms((sx, sy, sz))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
