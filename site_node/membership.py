"""Membership guard: a query holding the site's own slices is refused before the teacher runs.

A coordinator could send the site's private slices back as "proxy" slices and learn the
teacher's answers on its own training data (a membership-inference probe). Before a query is
answered, the egress gate (:mod:`site_node.egress`) screens its images against fingerprints of
every private slice of the serving teacher's cases (train, val and test of its ``split.json``),
prepared with the teacher's plan exactly as the site sees them:

* an exact hash: sha256 of the slice's float32 bytes (:func:`common.protocol.slice_hash`);
* a near-duplicate test invariant to flips, 90-degree rotations, small shifts and crops
  (:func:`screen`): each private slice's central ``CROP`` (80 %) is area-resampled to an
  ``F x F`` grid (``F = 2 R``, ``R`` = policy ``membership.resolution``, default 16, so 32 px).
  A query slice is tried in all 8 orientations of the dihedral group and at 3 central crops
  (fractions ``CROP * z``, ``z`` in :data:`ZOOMS`: what a crop-and-resize by up to 25 % maps
  back to); a coarse ``R/2 x R/2`` correlation picks its ``TOP_K`` nearest private slices, and
  a shift search (``+-SHIFT`` px of the ``F`` grid, correlation of the inner window, each
  window zero-mean and unit-norm) gives its score. A score ``>= membership.max_correlation``
  (default 0.96) is a member. The correlation ignores brightness/contrast changes and light
  noise. Flat slices (no structure) never match. Measured rates: ``bench/membership_guard.py``.

The fingerprints are made once per teacher (keyed by the sha256 of its ``teacher.json``) and
kept as ``membership.npz`` next to it; the file never leaves the site. Cost per query:
``N`` hashes and one ``(N, R*R) @ (R*R, M)`` product over the ``M`` private slices.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from common.io import atomic_write
from common.protocol import slice_hash
from site_node.node_config import NodeSettings
from site_node.policy import MembershipPolicy
from site_node.teacher_versions import serving_dir

FILE = "membership.npz"
log = logging.getLogger(__name__)


def area_matrix(side: int, low: int) -> np.ndarray:
    """``(low, side)`` float32 matrix whose row ``i`` averages pixels ``[i*side//low,
    ceil((i+1)*side/low))``: ``A @ x @ A.T`` is ``x (side, side)`` at ``(low, low)``."""
    lo = (np.arange(low) * side) // low
    hi = -((-np.arange(1, low + 1) * side) // low)
    cols = np.arange(side)
    m = ((cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None])).astype(np.float32)
    return m / m.sum(axis=1, keepdims=True)


def lowres(images: np.ndarray, low: int) -> np.ndarray:
    """``(N, [1,] H, W)`` slices -> ``(N, low*low)`` float32 rows, each zero-mean and unit-norm;
    the row of a flat slice (std <= 1e-4 of its largest magnitude) is all zeros."""
    x = np.nan_to_num(np.asarray(images, np.float32)).reshape(len(images), *images.shape[-2:])
    small = area_matrix(x.shape[1], low) @ x @ area_matrix(x.shape[2], low).T  # (N, low, low)
    v = small.reshape(len(x), -1)
    v = v - v.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    scale = np.abs(x).reshape(len(x), -1).max(axis=1, keepdims=True) if len(x) else norm
    flat = norm <= 1e-4 * np.sqrt(v.shape[1]) * scale + 1e-12
    return np.where(flat, 0.0, v / np.where(flat, 1.0, norm)).astype(np.float32)


FP_VERSION = 2
CROP = 0.8  # fingerprints cover the central 80 % of each slice
ZOOMS = (1.0, 1.12, 1.25)  # query crops CROP * z: a crop-and-resize by z maps back to CROP
TOP_K = 8  # private candidates per query slice for the shift search
SHIFT_FRACTION = 10  # shift search +-F // 10 px of the F grid (3 px at F = 32)


@dataclass(frozen=True)
class Fingerprints:
    """The private slices of one teacher: ``hashes`` (slice_hash of each prepared slice) and
    ``lowres`` ``(M, F*F)`` unit rows (the central-crop grids, ``F = 2 * resolution``) of the
    non-flat ones; ``teacher``: the sha256 of the ``teacher.json`` they were made for."""

    teacher: str
    resolution: int
    hashes: frozenset[str]
    lowres: np.ndarray

    def save(self, path: Path) -> None:
        """Write ``path`` (npz, no pickles) atomically."""
        def write(fh: IO[bytes]) -> None:
            np.savez(fh, teacher=np.array(self.teacher), resolution=np.array(self.resolution),
                     hashes=np.array(sorted(self.hashes), dtype="U64"),
                     lowres=self.lowres.astype(np.float16), version=np.array(FP_VERSION))

        atomic_write(path, write)

    @staticmethod
    def load(path: Path) -> Fingerprints:
        """Read a file written by :meth:`save` (another version: ``ValueError``)."""
        with np.load(path, allow_pickle=False) as z:
            if "version" not in z.files or int(z["version"]) != FP_VERSION:
                raise ValueError(f"{path}: fingerprints of another version")
            return Fingerprints(str(z["teacher"]), int(z["resolution"]),
                                frozenset(str(h) for h in z["hashes"]),
                                z["lowres"].astype(np.float32))


def _unit(v: np.ndarray) -> np.ndarray:
    """Rows ``(..., D)`` zero-mean and unit-norm; a flat row (no structure) becomes zeros."""
    v = v - v.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    flat = norm <= 1e-6 * np.sqrt(v.shape[-1]) * (np.abs(v).max(axis=-1, keepdims=True) + 1e-12)
    return np.where(flat, 0.0, v / np.where(flat, 1.0, norm)).astype(np.float32)


def crop_grid(images: np.ndarray, fraction: float, side: int) -> np.ndarray:
    """``(N, [1,] H, W)`` -> ``(N, side, side)``: the central ``fraction`` area-resampled."""
    x = np.nan_to_num(np.asarray(images, np.float32)).reshape(len(images), *images.shape[-2:])
    h, w = x.shape[1:]
    ch, cw = max(1, round(h * min(fraction, 1.0))), max(1, round(w * min(fraction, 1.0)))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    x = x[:, y0:y0 + ch, x0:x0 + cw]
    return _blur(area_matrix(ch, side) @ x @ area_matrix(cw, side).T)


def _blur(g: np.ndarray) -> np.ndarray:
    """``[1, 2, 1] / 4`` along both grid axes (edges replicated): sub-pixel shifts and the
    half-pixel offset of a mirrored even-sized crop then barely change the correlation."""
    for axis in (-2, -1):
        p = np.concatenate([np.take(g, [0], axis), g, np.take(g, [-1], axis)], axis=axis)
        n = g.shape[axis]
        g = (np.take(p, range(0, n), axis) + 2 * np.take(p, range(1, n + 1), axis)
             + np.take(p, range(2, n + 2), axis)) / 4
    return g


def dihedral(grids: np.ndarray) -> np.ndarray:
    """``(N, F, F)`` -> ``(N, 8, F, F)``: the 4 rotations of each grid and of its mirror."""
    out = [np.rot90(g, k, axes=(1, 2)) for g in (grids, grids[:, :, ::-1]) for k in range(4)]
    return np.stack(out, axis=1)


def card_digest(teacher: Path) -> str:
    """sha256 of ``teacher/teacher.json`` (a retrained teacher gets new fingerprints)."""
    from common.data.teacher_card import TeacherCard

    return hashlib.sha256(TeacherCard.path_of(teacher).read_bytes()).hexdigest()


def private_slices(data: Path, teacher: Path) -> np.ndarray:
    """``(M, S, S)`` float32: every slice of the teacher's cases, prepared by its plan."""
    from common.data.layout import discover_dataset
    from common.data.slices import load_volumes
    from common.data.split import load_split
    from common.inference.predict import teacher_plan

    plan = teacher_plan(teacher)
    split = load_split(teacher / "split.json")
    vols = load_volumes(discover_dataset(data), [*split.train, *split.val, *split.test],
                        plan.size, plan=plan)
    return np.concatenate([v.image for v in vols]).astype(np.float32)


def build_fingerprints(slices: np.ndarray, teacher: str, resolution: int) -> Fingerprints:
    """Fingerprints of ``slices (M, S, S)``; flat slices keep only their hash."""
    grid = _unit(crop_grid(slices, CROP, 2 * resolution).reshape(len(slices), -1))
    keep = np.abs(grid).sum(axis=1) > 0
    return Fingerprints(teacher, resolution, frozenset(slice_hash(s) for s in slices),
                        grid[keep])


def teacher_fingerprints(data: Path, teacher: Path, resolution: int) -> Fingerprints:
    """``teacher/membership.npz`` when made for this teacher and resolution, else built and
    saved (once per teacher)."""
    digest, path = card_digest(teacher), teacher / FILE
    if path.is_file():
        try:
            fp = Fingerprints.load(path)
            if fp.teacher == digest and fp.resolution == resolution:
                return fp
        except (OSError, ValueError, KeyError):
            log.warning("%s: unreadable; rebuilding the membership fingerprints", path)
    fp = build_fingerprints(private_slices(data, teacher), digest, resolution)
    fp.save(path)
    log.info("%s: fingerprints of %d private slices", path, len(fp.hashes))
    return fp


def _coarse(grids: np.ndarray, side: int) -> np.ndarray:
    """``(..., F, F)`` -> ``(..., side*side)`` unit rows (the prefilter)."""
    f = grids.shape[-1]
    a = area_matrix(f, side)
    return _unit((a @ grids @ a.T).reshape(*grids.shape[:-2], side * side))


def _window_sums(grids: np.ndarray, w: int) -> np.ndarray:
    """``(K, F, F)`` -> ``(K, F-w+1, F-w+1)`` sums of every ``w x w`` window (integral image)."""
    c = np.pad(grids.cumsum(axis=1).cumsum(axis=2), ((0, 0), (1, 0), (1, 0)))
    return c[:, w:, w:] - c[:, :-w, w:] - c[:, w:, :-w] + c[:, :-w, :-w]


def shift_correlation(grids: np.ndarray, inner: np.ndarray, shift: int) -> np.ndarray:
    """``(K, F, F)`` grids against ``inner (K, W*W)`` unit zero-mean rows (``W = F - 2s``):
    ``(K, (2s+1)^2)`` correlation of each grid's window at every shift with its row (a flat
    window: 0). ``sum(w * p) / |w - mean(w)|`` because ``p`` is zero-mean and unit-norm."""
    from numpy.lib.stride_tricks import sliding_window_view

    k, f = len(grids), grids.shape[-1]
    w = f - 2 * shift
    view = sliding_window_view(grids, (w, w), axis=(1, 2))  # (K, 2s+1, 2s+1, W, W)
    num = np.einsum("kabij,kij->kab", view, inner.reshape(k, w, w))
    s1, s2 = _window_sums(grids, w), _window_sums(grids * grids, w)
    den = np.sqrt(np.maximum(s2 - s1 * s1 / (w * w), 0.0))
    tiny = 1e-6 * w * (np.abs(grids).reshape(k, -1).max(axis=1) + 1e-12)[:, None, None]
    return np.where(den > tiny, num / np.where(den > tiny, den, 1.0), 0.0).reshape(k, -1)


def scores(images: np.ndarray, fp: Fingerprints) -> np.ndarray:
    """``(N,)`` best correlation of each query slice with any private slice, over the dihedral
    group, the :data:`ZOOMS` crops and shifts up to ``F // SHIFT_FRACTION`` px (module doc)."""
    f = 2 * fp.resolution
    shift = max(1, f // SHIFT_FRACTION)
    private = fp.lowres.reshape(-1, f, f)
    variants = np.concatenate([dihedral(crop_grid(images, CROP * z, f)) for z in ZOOMS],
                              axis=1)  # (N, V, F, F)
    n, v = variants.shape[:2]
    coarse = max(2, fp.resolution // 2)
    sims = _coarse(variants, coarse).reshape(n * v, -1) @ _coarse(private, coarse).T
    sims = sims.reshape(n, v * len(private))
    inner = _unit(private[:, shift:f - shift, shift:f - shift].reshape(len(private), -1))
    k = min(TOP_K, sims.shape[1])
    var, j = np.divmod(np.argpartition(-sims, k - 1, axis=1)[:, :k], len(private))  # (N, k)
    rows = np.repeat(np.arange(n), k)
    corr = shift_correlation(variants[rows, var.ravel()], inner[j.ravel()], shift)
    return corr.reshape(n, -1).max(axis=1).astype(np.float32)


def screen(images: np.ndarray, fp: Fingerprints, max_correlation: float) -> str | None:
    """Why ``images (N, 1, S, S)`` must not be answered (members found), or None."""
    n = len(images)
    exact = [i for i, im in enumerate(images) if slice_hash(im) in fp.hashes]
    if exact:
        return (f"membership guard: {len(exact)} of {n} query slices are this site's own "
                f"private slices (exact hash; first at index {exact[0]})")
    if n == 0 or len(fp.lowres) == 0:
        return None
    best = scores(images, fp)
    hits = best >= max_correlation
    if not hits.any():
        return None
    return (f"membership guard: {int(hits.sum())} of {n} query slices match this site's own "
            f"private slices (correlation {float(best.max()):.3f} >= {max_correlation}, "
            f"flips, rotations, shifts and crops tried, at {2 * fp.resolution} px)")


def membership_refusal(node_config: Mapping[str, Any], rule: MembershipPolicy,
                       arrays: Mapping[str, np.ndarray]) -> str | None:
    """The egress gate's screen of a query's ``images``; None to answer it. A malformed
    request passes (decoding refuses it); a guard that cannot run refuses (fails closed)."""
    images = arrays.get("images")
    if (not rule.enabled or not isinstance(images, np.ndarray) or images.ndim != 4
            or images.shape[1] != 1 or images.dtype.kind not in "fiu"):
        return None
    try:
        node = NodeSettings.from_node_config(dict(node_config))
        fp = teacher_fingerprints(node.data, serving_dir(node.teacher_dir), rule.resolution)
    except (OSError, ValueError, KeyError) as exc:
        return f"membership guard unavailable: {str(exc).splitlines()[0] if str(exc) else exc!r}"
    return screen(images, fp, rule.max_correlation)
