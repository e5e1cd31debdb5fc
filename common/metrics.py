"""Segmentation metrics on binary masks: Dice, VOE, HD95 (numpy + scipy only).

All functions take binary arrays (bool or int, any number of dimensions, identical shapes);
any non-zero value counts as foreground.

Empty-mask conventions (documented once, used everywhere):

* both prediction and ground truth empty: Dice 1.0, VOE 0.0, HD95 0.0 (perfect agreement);
* exactly one empty: Dice 0.0, VOE 1.0, HD95 ``nan`` (a surface distance to nothing is
  undefined). Aggregators (:func:`summarise`) use a nan-aware mean and report how many
  HD95 values were undefined (``hd95_undefined``) so the nans are never silently dropped.

Spacing is in the ARRAY's axis order, one positive finite value (mm) per axis: for the
canonical ``(D, H, W)`` arrays of :mod:`common.data` it is ``(sz, sy, sx)``; for a mask in a NIfTI
file's own ``(X, Y, Z)`` order it is the header zooms ``(zx, zy, zz)``. Wrong length, zero,
negative, NaN or infinite entries raise ``ValueError`` (:func:`check_spacing`); the order itself
cannot be checked, so pass the spacing that belongs with the array (``PreparedCase.native_zooms``
for native masks, ``Volume.spacing`` for prepared-grid masks).

The paper's Eq. 9 ``1 - |P∩G| / (|P| + |G|)`` is not the standard volumetric overlap error
(a perfect prediction scores 0.5); :func:`voe` is the standard ``1 - |P∩G| / |P∪G|`` and
:func:`voe_paper` reproduces Eq. 9 only for comparison with the paper's tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "SegScores",
    "check_spacing",
    "VolumeAccumulator",
    "dice",
    "hd95",
    "score_slices",
    "score_volume",
    "summarise",
    "voe",
    "voe_paper",
]


def _binary_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cast both arrays to bool and check that their shapes agree."""
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} != gt shape {g.shape}")
    return p, g


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice = 2|P∩G| / (|P| + |G|); 1.0 when both are empty."""
    p, g = _binary_pair(pred, gt)
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, g).sum()) / denom


def voe(pred: np.ndarray, gt: np.ndarray) -> float:
    """Standard volumetric overlap error 1 - |P∩G| / |P∪G| (1 - Jaccard); 0.0 when both empty."""
    p, g = _binary_pair(pred, gt)
    union = int(np.logical_or(p, g).sum())
    if union == 0:
        return 0.0
    return 1.0 - int(np.logical_and(p, g).sum()) / union


def voe_paper(pred: np.ndarray, gt: np.ndarray) -> float:
    """Paper Eq. 9: 1 - |P∩G| / (|P| + |G|). Non-standard (perfect match gives 0.5).

    Kept only to reproduce the paper's numbers; 0.0 when both are empty.
    """
    p, g = _binary_pair(pred, gt)
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return 0.0
    return 1.0 - int(np.logical_and(p, g).sum()) / denom


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with at least one face-neighbour in the background (or the border)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return np.logical_and(mask, np.logical_not(eroded))


def check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """Validate a spacing for an ``ndim``-D array: ``ndim`` finite values > 0 (mm)."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"spacing {spacing!r} is not a sequence of numbers") from exc
    if len(values) != ndim:
        raise ValueError(f"spacing {spacing} has {len(values)} entries for a {ndim}-D mask")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing {spacing} must be finite and > 0 mm on every axis")
    return values


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """HD95 in mm: 95th percentile of the POOLED directed surface distances (medpy's ``hd95``).

    Convention (identical to ``medpy.metric.binary.hd95`` with connectivity 1): surface voxels
    of each mask are the voxels removed by one face-connected erosion (border counts as
    background); the distances from every surface voxel of P to the nearest surface voxel of G
    and from every surface voxel of G to the nearest of P are computed with
    ``scipy.ndimage.distance_transform_edt(sampling=spacing)``; both sets are pooled into one
    array and its 95th percentile (linear interpolation) is returned. This is NOT the max of
    the two directed 95th percentiles. ``spacing``: mm per axis in the arrays' axis order
    (module doc), validated by :func:`check_spacing`. 0.0 if both masks are empty, nan if one is.
    """
    p, g = _binary_pair(pred, gt)
    spacing = check_spacing(spacing, p.ndim)
    if not p.any() and not g.any():
        return 0.0
    if not p.any() or not g.any():
        return float("nan")
    sp, sg = _surface(p), _surface(g)
    to_gt = ndimage.distance_transform_edt(np.logical_not(sg), sampling=spacing)
    to_pred = ndimage.distance_transform_edt(np.logical_not(sp), sampling=spacing)
    distances = np.concatenate([to_gt[sp], to_pred[sg]])
    return float(np.percentile(distances, 95))


@dataclass
class SegScores:
    """Scores of one volume or slice. ``hd95`` is in mm and may be nan (see module doc)."""

    dice: float
    voe: float
    hd95: float


def score_volume(
    pred_dhw: np.ndarray, gt_dhw: np.ndarray, spacing: Sequence[float]
) -> SegScores:
    """Dice, VOE and HD95 (mm) of a whole volume.

    ``spacing``: mm per axis in the arrays' axis order ((sz, sy, sx) for canonical (D, H, W)
    arrays, the NIfTI zooms (zx, zy, zz) for masks in a file's (X, Y, Z) order); validated
    before anything is computed (:func:`check_spacing`).
    """
    check_spacing(spacing, np.asarray(pred_dhw).ndim)
    return SegScores(dice(pred_dhw, gt_dhw), voe(pred_dhw, gt_dhw), hd95(pred_dhw, gt_dhw, spacing))


def score_slices(
    pred_dhw: np.ndarray, gt_dhw: np.ndarray, spacing: tuple[float, ...]
) -> list[SegScores]:
    """Per-slice scores along axis 0 of ``(D, H, W)`` arrays, using the in-plane spacing.

    ``spacing`` is either the 3-D ``(sz, sy, sx)`` (``sz`` is ignored) or already ``(sy, sx)``.
    """
    p, g = _binary_pair(pred_dhw, gt_dhw)
    if p.ndim != 3:
        raise ValueError(f"expected (D, H, W) arrays, got shape {p.shape}")
    inplane = tuple(spacing[-2:])
    return [score_volume(p[z], g[z], inplane) for z in range(p.shape[0])]


class VolumeAccumulator:
    """Collects per-slice 2-D predictions and reassembles each case's volume in z order.

    Slices may arrive in any order (e.g. from a shuffled loader); adding the same
    ``(case_id, z)`` twice is an error.
    """

    def __init__(self) -> None:
        self._slices: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, case_id: str, z: int, pred2d: np.ndarray, gt2d: np.ndarray) -> None:
        """Store slice ``z`` of case ``case_id``; ``pred2d``/``gt2d`` are ``(H, W)`` binary."""
        p, g = _binary_pair(pred2d, gt2d)
        if p.ndim != 2:
            raise ValueError(f"expected 2-D slices, got shape {p.shape}")
        case = self._slices.setdefault(case_id, {})
        if z in case:
            raise ValueError(f"slice z={z} of case {case_id!r} added twice")
        case[int(z)] = (p, g)

    def case_ids(self) -> list[str]:
        """Sorted case ids seen so far."""
        return sorted(self._slices)

    def volume(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(pred, gt)`` bool volumes ``(D, H, W)`` stacked in increasing z."""
        case = self._slices[case_id]
        zs = sorted(case)
        pred = np.stack([case[z][0] for z in zs])
        gt = np.stack([case[z][1] for z in zs])
        return pred, gt

    def scores(self, spacings: dict[str, tuple[float, ...]]) -> dict[str, SegScores]:
        """Volume scores per case; ``spacings[case_id]`` is ``(sz, sy, sx)`` in mm."""
        missing = [c for c in self._slices if c not in spacings]
        if missing:
            raise KeyError(f"no spacing given for cases {sorted(missing)}")
        out: dict[str, SegScores] = {}
        for case_id in self.case_ids():
            pred, gt = self.volume(case_id)
            out[case_id] = score_volume(pred, gt, spacings[case_id])
        return out


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """nan-aware mean and (population) std; (nan, nan) when nothing is finite."""
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std())


def summarise(scores: dict[str, SegScores]) -> dict[str, float]:
    """Mean/std of each metric over cases plus ``hd95_undefined`` (count of nan HD95) and ``n``.

    Keys: ``dice_mean, dice_std, voe_mean, voe_std, hd95_mean, hd95_std, hd95_undefined, n``.
    """
    out: dict[str, float] = {"n": float(len(scores))}
    for name in ("dice", "voe", "hd95"):
        vals = np.array([getattr(s, name) for s in scores.values()], dtype=float)
        out[f"{name}_mean"], out[f"{name}_std"] = _mean_std(vals)
    hd = np.array([s.hd95 for s in scores.values()], dtype=float)
    out["hd95_undefined"] = float(np.isnan(hd).sum())
    return out
