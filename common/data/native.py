"""Prepare a NIfTI image for the network and map predictions back to its native grid.

Forward (:func:`prepare_image`): read the file, reorient to canonical RAS ``(z, y, x)``,
normalise (:class:`~common.data.plan.Plan`), resample each axial slice in-plane to the plan's
spacing (bilinear; aspect ratio kept; depth and slice spacing unchanged), then centre crop /
pad to ``(size, size)`` (padding: :meth:`~common.data.plan.Plan.pad_value`). A field wider
than the canvas is also kept whole (:attr:`PreparedCase.whole_image`: padded to at least the
canvas, never cropped) for sliding-window inference (:mod:`common.data.window`) and for
training, which draws random ``size x size`` crops of it
(:class:`common.data.slices.SliceDataset`). Inverse (:func:`to_native`, from either grid): undo
the crop / pad (cropped-away pixels become background), resample the *probabilities* back to
the original in-plane size (bilinear), argmax, and return to the file's own orientation.
A resample whose factor is exactly 1 is skipped, so at the native spacing the round trip is
exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import nibabel as nib
import numpy as np

from common.data.ct_units import as_hu
from common.data.errors import data_error
from common.data.labels import select_target
from common.data.nifti import (
    NiftiFile,
    Reader,
    Spacing,
    from_canonical_zyx,
    read_nifti,
    to_canonical_zyx,
)
from common.data.plan import Plan

_EPS = 1e-8


@dataclass
class PreparedCase:
    """One image prepared for the network plus everything needed to invert it.

    ``image``: (D, S, S) float32. ``native_shape``: the file's 3D data shape (X, Y, Z);
    ``canonical_shape``: (D, H, W) in RAS; ``resampled_hw``: (H2, W2) after resampling;
    ``offset``: (oy, ox) where the resampled slice starts inside the S x S grid (negative:
    cropped). ``affine`` / ``header``: the input file's, for writing masks. ``whole``: the
    uncropped field (:attr:`whole_image`; None when it fits the canvas) placed at
    ``whole_offset`` (>= 0).
    """

    path: Path
    image: np.ndarray
    plan: Plan
    affine: np.ndarray
    header: Any
    ornt: np.ndarray
    native_shape: tuple[int, int, int]
    native_zooms: tuple[float, float, float]
    canonical_shape: tuple[int, int, int]
    canonical_spacing: Spacing
    resampled_hw: tuple[int, int]
    offset: tuple[int, int]
    whole: np.ndarray | None = None
    whole_offset: tuple[int, int] = (0, 0)

    @property
    def whole_image(self) -> np.ndarray:
        """(D, GH, GW) float32, GH = max(S, H2), GW = max(S, W2): the whole resampled field of
        view, padded to at least the canvas, never cropped (sliding-window inference,
        :mod:`common.data.window`); ``image`` itself when the field fits the canvas."""
        return self.image if self.whole is None else self.whole

    @property
    def extent(self) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``: the part of the S x S grid the resampled slice covers (the
        rest is the canvas padding :func:`place` added; empty of anatomy)."""
        return canvas_extent(self.resampled_hw, self.offset, self.plan.size)

    @property
    def spacing(self) -> Spacing:
        """(sz, sy, sx) mm of the prepared (D, S, S) grid."""
        sz, sy, sx = self.canonical_spacing
        (_, h, w), (h2, w2) = self.canonical_shape, self.resampled_hw
        return (sz, round(sy * h / h2, 6), round(sx * w / w2, 6))


def normalise(vol: np.ndarray, plan: Plan) -> np.ndarray:
    """Normalise a volume as the plan says (module doc of :mod:`common.data.plan`)."""
    v = np.asarray(vol, dtype=np.float32)
    if plan.norm == "ct":
        (lo, hi), mean, std = plan.ct_params()
        v = as_hu(v)
        return ((np.clip(v, lo, hi) - mean) / max(std, _EPS)).astype(np.float32)
    lo, hi = np.percentile(v, plan.mri_percentiles)
    c = np.clip(v, lo, hi)
    return ((c - float(c.mean())) / max(float(c.std()), _EPS)).astype(np.float32)


def _target_hw(hw: tuple[int, int], spacing_yx: tuple[float, float], plan: Plan
               ) -> tuple[int, int]:
    """In-plane shape after resampling to the plan's spacing (or fitting into ``size``)."""
    h, w = hw
    if plan.spacing is None:
        f = plan.size / max(h, w)
        return max(1, round(h * f)), max(1, round(w * f))
    ty, tx = plan.spacing
    return max(1, round(h * spacing_yx[0] / ty)), max(1, round(w * spacing_yx[1] / tx))


def resize_stack(arr: np.ndarray, hw: tuple[int, int], linear: bool) -> np.ndarray:
    """Resize every (H, W) slice of an (N, H, W) array to ``hw`` (bilinear or nearest)."""
    if arr.shape[1:] == tuple(hw):
        return arr.copy()
    interp = cv2.INTER_LINEAR if linear else cv2.INTER_NEAREST
    dsize = (int(hw[1]), int(hw[0]))
    return np.stack([cv2.resize(np.ascontiguousarray(s), dsize, interpolation=interp)
                     for s in arr]).astype(arr.dtype, copy=False)


def _window(n_src: int, n_dst: int, off: int) -> tuple[slice, slice]:
    """Source / destination slices placing ``n_src`` items at ``off`` in ``n_dst``."""
    s0, d0 = max(0, -off), max(0, off)
    n = min(n_src - s0, n_dst - d0)
    return slice(s0, s0 + n), slice(d0, d0 + n)


def canvas_extent(hw: tuple[int, int], offset: tuple[int, int], size: int
                  ) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` covered in the ``size`` x ``size`` grid by an ``hw`` slice placed at
    ``offset`` (:func:`place`); the whole grid when the slice is cropped."""
    (_, dy), (_, dx) = _window(hw[0], size, offset[0]), _window(hw[1], size, offset[1])
    return int(dy.start), int(dy.stop), int(dx.start), int(dx.stop)


def extent_mask(extent: Sequence[int] | None, hw: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` float32: 1 inside ``extent`` ``(y0, y1, x0, x1)``, 0 outside (all ones when
    ``extent`` is None: no canvas padding)."""
    if extent is None:
        return np.ones(hw, np.float32)
    y0, y1, x0, x1 = (int(v) for v in extent)
    out = np.zeros(hw, np.float32)
    out[y0:y1, x0:x1] = 1.0
    return out


def whole_extents(n: int, hw: tuple[int, int]) -> np.ndarray:
    """``(n, 4)`` int32 extents covering the whole ``hw`` canvas of ``n`` slices."""
    return np.tile(np.asarray([0, hw[0], 0, hw[1]], np.int32), (n, 1))


def place(src: np.ndarray, size: int | tuple[int, int], offset: tuple[int, int], fill: float
          ) -> np.ndarray:
    """(..., H2, W2) -> (..., size, size) (or ``size`` = (GH, GW)): centre crop / pad by
    ``offset`` (pad = ``fill``)."""
    gh, gw = (size, size) if isinstance(size, int) else size
    out = np.full((*src.shape[:-2], gh, gw), fill, dtype=src.dtype)
    (sy, dy), (sx, dx) = (_window(src.shape[-2], gh, offset[0]),
                          _window(src.shape[-1], gw, offset[1]))
    out[..., dy, dx] = src[..., sy, sx]
    return out


def unplace(arr: np.ndarray, hw: tuple[int, int], offset: tuple[int, int],
            fill: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`place`: (..., S, S) -> (..., H2, W2); cropped-away pixels = ``fill``."""
    out = np.empty((*arr.shape[:-2], *hw), dtype=arr.dtype)
    out[...] = fill
    (dy, sy), (dx, sx) = (_window(hw[0], arr.shape[-2], offset[0]),
                          _window(hw[1], arr.shape[-1], offset[1]))
    out[..., dy, dx] = arr[..., sy, sx]
    return out


def prepare_image(path: Path | str, plan: Plan) -> PreparedCase:
    """Load, reorient, normalise, resample and crop/pad one image (channel 0 of a 4D image)."""
    f = read_nifti(path, first_channel=True)
    return prepare_loaded(f, plan)


def prepare_loaded(f: NiftiFile, plan: Plan) -> PreparedCase:
    """:func:`prepare_image` on an already read file."""
    vol, spacing = f.canonical_zyx()
    d, h, w = vol.shape
    hw2 = _target_hw((h, w), (spacing[1], spacing[2]), plan)
    offset = ((plan.size - hw2[0]) // 2, (plan.size - hw2[1]) // 2)
    norm = normalise(vol, plan)
    resampled = resize_stack(norm, hw2, linear=True)
    fill = plan.pad_value()
    image = place(resampled, plan.size, offset, fill).astype(np.float32)
    whole, whole_offset = None, offset
    if max(hw2[0], hw2[1]) > plan.size:  # wider than the canvas: keep the whole field too
        grid = (max(plan.size, hw2[0]), max(plan.size, hw2[1]))
        whole_offset = ((grid[0] - hw2[0]) // 2, (grid[1] - hw2[1]) // 2)
        whole = place(resampled, grid, whole_offset, fill).astype(np.float32)
    return PreparedCase(f.path, image, plan, f.affine, f.header, f.ornt,
                        (int(f.data.shape[0]), int(f.data.shape[1]), int(f.data.shape[2])),
                        f.zooms, (d, h, w), spacing, hw2, offset, whole, whole_offset)


def prepare_label(native_mask: np.ndarray, case: PreparedCase) -> np.ndarray:
    """A native (X, Y, Z) uint8 mask in the file's orientation -> (D, S, S) uint8 (nearest)."""
    if tuple(native_mask.shape) != case.native_shape:
        raise data_error(case.path, f"mask shape {native_mask.shape} != {case.native_shape}")
    can = to_canonical_zyx(np.asarray(native_mask, np.uint8), case.ornt)
    return place(resize_stack(can, case.resampled_hw, linear=False), case.plan.size,
                 case.offset, 0)


def prepare_label_whole(native_mask: np.ndarray, case: PreparedCase) -> np.ndarray:
    """Like :func:`prepare_label` on the whole field: (D, GH, GW) uint8, as ``whole_image``."""
    if case.whole is None:
        return prepare_label(native_mask, case)
    can = to_canonical_zyx(np.asarray(native_mask, np.uint8), case.ornt)
    return place(resize_stack(can, case.resampled_hw, linear=False), case.whole.shape[1:],
                 case.whole_offset, 0)


def load_native_label(path: Path | str, image: NiftiFile, labels: list[int] | None,
                      union: bool = False, declared: list[int] | None = None,
                      read: Reader = read_nifti) -> np.ndarray:
    """Check the label's header against ``image``, then read it (with ``read``) and select the
    target (:func:`common.data.labels.select_target` with ``union`` / ``declared``): the
    untouched (X, Y, Z) label in the file's orientation as uint8 {0, 1}. A 4D label is
    refused."""
    from common.data.geometry import check_geometry
    from common.data.nifti import read_header

    check_geometry(image, read_header(path))  # before any voxel of the label is read
    lab = read(path, allow_empty=True)
    check_geometry(image, lab)
    return select_target(lab.data, labels, path, union=union, declared=declared)


def to_native(probs: np.ndarray, case: PreparedCase) -> np.ndarray:
    """Map class probabilities on the prepared grid back to the file's native grid.

    Args:
        probs: (D, K, S, S) float probabilities (softmax) on the canvas, or (D, K, GH, GW) on
            the whole field of view (:attr:`PreparedCase.whole_image`).
    Returns:
        (X, Y, Z) uint8 class map (argmax) with exactly the input file's data shape and
        orientation.
    """
    p = np.asarray(probs, dtype=np.float32)
    d, h, w = case.canonical_shape
    whole = case.whole_image.shape[1:]
    if p.ndim != 4 or p.shape[0] != d or p.shape[2:] not in (whole, (case.plan.size,) * 2):
        raise data_error(case.path, f"probabilities of shape {p.shape} do not fit the prepared "
                                    f"grid ({d}, K, {case.plan.size}, {case.plan.size}) or "
                                    f"the whole field ({d}, K, {whole[0]}, {whole[1]})")
    offset = case.whole_offset if p.shape[2:] == whole else case.offset
    k = p.shape[1]
    background = np.zeros((k, 1, 1), np.float32)
    background[0] = 1.0
    full = unplace(p, case.resampled_hw, offset, background)
    back = resize_stack(full.reshape(d * k, *case.resampled_hw), (h, w), linear=True)
    labels = back.reshape(d, k, h, w).argmax(axis=1).astype(np.uint8)
    return from_canonical_zyx(labels, case.ornt)


def canvas_view(labels: np.ndarray, case: PreparedCase) -> np.ndarray:
    """(D, GH, GW) labels on the whole field -> (D, S, S) on the canvas (as ``case.image``)."""
    if labels.shape[1:] == (case.plan.size, case.plan.size):
        return labels
    field = unplace(labels, case.resampled_hw, case.whole_offset, 0)
    return place(field, case.plan.size, case.offset, 0)


def save_native_mask(mask: np.ndarray, case: PreparedCase, out: Path | str) -> Path:
    """Write an (X, Y, Z) mask as uint8 NIfTI with the input's original affine and header."""
    arr = np.asarray(mask).astype(np.uint8)
    if tuple(arr.shape) != case.native_shape:
        raise data_error(out, f"mask shape {arr.shape} != input shape {case.native_shape}")
    header = case.header.copy() if isinstance(case.header, nib.Nifti1Header) else None
    img = nib.Nifti1Image(arr, case.affine, header=header)
    img.header.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out))
    return out


__all__ = ["PreparedCase", "canvas_extent", "canvas_view", "extent_mask", "load_native_label",
           "normalise", "prepare_image", "prepare_label", "prepare_label_whole",
           "save_native_mask", "to_native", "whole_extents"]
