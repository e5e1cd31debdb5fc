"""NIfTI reading and writing in axial-first (D, H, W) = (z, y, x) order.

Every volume is first reoriented to the closest canonical orientation, RAS (nibabel's
``as_closest_canonical``: axis permutations and flips only, no interpolation), then the
nibabel (x, y, z) array is transposed to (z, y, x) so that ``vol[k]`` is axial slice ``k``.
Spacing is returned as (sz, sy, sx) in millimetres, rounded to 6 decimals because the NIfTI
header stores zooms as float32 (0.6 would otherwise come back as 0.6000000238).
:func:`read_nifti` keeps the file's own orientation, affine and header (to map back).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from common.data.errors import DataError, data_error

Spacing = tuple[float, float, float]
_READ_ERRORS = (
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,  # e.g. an unknown datatype code (tests/test_fuzz.py)
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    gzip.BadGzipFile,
)


@dataclass
class NiftiFile:
    """A NIfTI volume exactly as stored: ``data`` (X, Y, Z) float32 in the file's own axis
    order (channel 0 of a 4D image), ``affine`` (4, 4), ``header``, ``zooms`` (zx, zy, zz)."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    header: Any
    zooms: tuple[float, float, float]

    @property
    def ornt(self) -> np.ndarray:
        """nibabel orientation (3, 2) of the file's axes relative to RAS."""
        return nib.orientations.io_orientation(self.affine)

    def canonical_zyx(self) -> tuple[np.ndarray, Spacing]:
        """The volume in canonical RAS as (z, y, x) plus its spacing (sz, sy, sx) in mm."""
        return to_canonical_zyx(self.data, self.ornt), canonical_spacing(self.zooms, self.ornt)


def to_canonical_zyx(data_xyz: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """File-order (X, Y, Z) array -> canonical RAS (z, y, x) array (permute / flip only)."""
    ras = nib.orientations.apply_orientation(data_xyz, ornt)
    return np.ascontiguousarray(ras.transpose(2, 1, 0))


def from_canonical_zyx(data_zyx: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_canonical_zyx`: canonical (z, y, x) -> the file's (X, Y, Z) order."""
    inverse = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    return np.ascontiguousarray(nib.orientations.apply_orientation(data_zyx.transpose(2, 1, 0),
                                                                   inverse))


def canonical_spacing(zooms_xyz: tuple[float, ...], ornt: np.ndarray) -> Spacing:
    """File zooms (zx, zy, zz) -> canonical (sz, sy, sx), rounded to 6 decimals."""
    ras = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        ras[int(target)] = round(float(zooms_xyz[axis]), 6)
    return (ras[2], ras[1], ras[0])


def read_nifti(path: Path | str, allow_empty: bool = False,
               first_channel: bool = False) -> NiftiFile:
    """Read and validate a NIfTI file, keeping its own orientation, affine and header.

    Same checks as :func:`load_nifti` (missing / corrupt file, not 3D, NaN/Inf, all zeros).
    """
    path = Path(path)
    img, zooms, affine = _open_checked(path)  # the claimed size is checked before any voxel
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except _READ_ERRORS as exc:
        raise data_error(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    data = _check_array(path, data, allow_empty, first_channel)
    return NiftiFile(path, data, affine, img.header, (zooms[0], zooms[1], zooms[2]))


Reader = Callable[..., NiftiFile]
"""What reads a volume: :func:`read_nifti` itself or a :class:`ReadOnce` method (same arguments)."""


class ReadOnce:
    """One run's :func:`read_nifti`, reading every file from disk at most once.

    :meth:`keep` reads a file (or reuses the one it kept) and keeps it for a later step of the
    same run; :meth:`take` hands a kept file out and forgets it (a file never kept is simply
    read). A site's training run fingerprints its training cases with ``keep``, computes the
    card's intensity statistics with ``keep`` (no read: the files are kept) and loads every
    case with ``take``, so each image and label is read once and held no longer than needed.
    Arrays are shared, never copied: callers must not modify ``data`` in place.
    """

    def __init__(self) -> None:
        self._kept: dict[tuple[Path, bool, bool], NiftiFile] = {}

    def keep(self, path: Path | str, allow_empty: bool = False,
             first_channel: bool = False) -> NiftiFile:
        """:func:`read_nifti` of ``path``, read only the first time and kept until taken."""
        key = (Path(path), allow_empty, first_channel)
        if key not in self._kept:
            self._kept[key] = read_nifti(path, allow_empty, first_channel)
        return self._kept[key]

    def take(self, path: Path | str, allow_empty: bool = False,
             first_channel: bool = False) -> NiftiFile:
        """The kept file of ``path`` (then forgotten), or :func:`read_nifti` when none is kept."""
        kept = self._kept.pop((Path(path), allow_empty, first_channel), None)
        return kept if kept is not None else read_nifti(path, allow_empty, first_channel)

    def __len__(self) -> int:
        return len(self._kept)


def _open_checked(path: Path) -> tuple[Any, tuple[float, ...], np.ndarray]:
    """``(nibabel image, zooms, affine)`` of ``path``, its header read and its claimed size
    checked (:func:`check_claimed_size`) but no voxel read; a missing or unreadable file is a
    one-line :class:`DataError`."""
    if not path.is_file():
        raise data_error(path, "file not found")
    try:
        img: Any = nib.load(str(path))
        check_claimed_size(path, img.header)
        zooms = tuple(float(z) for z in img.header.get_zooms())
        return img, zooms, np.asarray(img.affine, dtype=np.float64)
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise data_error(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from exc


def read_header(path: Path | str, first_channel: bool = False) -> NiftiFile:
    """The header of a NIfTI file as a :class:`NiftiFile` whose ``data`` is a zero-byte
    read-only stand-in of the claimed (X, Y, Z) shape (``np.broadcast_to``): geometry can be
    compared before any voxel is read. Same size checks as :func:`read_nifti`; a 4D image gives
    its first three axes when ``first_channel`` or when it has one frame."""
    path = Path(path)
    img, zooms, affine = _open_checked(path)
    shape = tuple(int(n) for n in img.header.get_data_shape())
    if len(shape) == 4 and (shape[3] == 1 or first_channel):
        shape = shape[:3]
    if len(shape) != 3:
        raise data_error(path, f"expected a 3D volume, got shape {shape}")
    stand_in = np.broadcast_to(np.float32(0), shape)
    return NiftiFile(path, stand_in, affine, img.header, (zooms[0], zooms[1], zooms[2]))


# Cheap checks before anything is allocated. Deflate cannot compress better than ~1032:1, so a
# .nii.gz whose header claims more than MAX_GZIP_RATIO x its own size is lying (or truncated).
MAX_GZIP_RATIO = 1100
MAX_VOXELS = 2**30
"""Absolute cap on the voxels a header may claim (4 GiB as float32); raise it for huge scans."""


def check_claimed_size(path: Path, header: Any, max_voxels: int | None = None) -> None:
    """Refuse (one-line DataError) a header whose claimed data size (shape x dtype itemsize)
    cannot be in the file, or whose voxel count exceeds ``max_voxels`` (default
    :data:`MAX_VOXELS`, read at call time); only ``stat`` and the header are used."""
    shape = tuple(int(n) for n in header.get_data_shape())
    voxels = int(np.prod(shape, dtype=np.float64)) if shape else 0
    claimed = voxels * np.dtype(header.get_data_dtype()).itemsize
    size = path.stat().st_size
    if path.name.endswith(".gz") and claimed > size * MAX_GZIP_RATIO:
        raise data_error(path, f"header claims {claimed:,} bytes of data (shape {shape}) but "
                               f"the file has only {size:,} compressed bytes")
    offset = int(header.get("vox_offset", 0)) if hasattr(header, "get") else 0
    if path.name.endswith(".nii") and claimed + offset > size:
        raise data_error(path, f"header claims {claimed:,} bytes of data (shape {shape}) but "
                               f"the file has only {size:,} bytes (truncated?)")
    cap = MAX_VOXELS if max_voxels is None else max_voxels
    if voxels > cap:
        raise data_error(path, f"header claims shape {shape} = {voxels:,} voxels, over the "
                               f"limit of {cap:,}")


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
    """Load a 3D NIfTI file in canonical RAS (``first_channel``: a 4D multi-channel image gives
    channel 0, as ``_0000`` of the nnU-Net naming, e.g. T2 of MSD Task05's T2 + ADC).

    Returns ``(array, spacing)``: ``array`` float32 of shape (D, H, W) = (z, y, x) of the RAS
    reoriented volume and ``spacing`` = (sz, sy, sx) in mm. Raises :class:`DataError` (message
    starts with the path) for a missing, corrupt or truncated file, a non-3D array (4D with a
    last dim of 1 is accepted), NaN/Inf voxels, or an empty / all-zero volume (unless
    ``allow_empty``).
    """
    arr, spacing = read_nifti(path, allow_empty, first_channel).canonical_zyx()
    return arr.astype(np.float32, copy=False), spacing


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
