"""Membership guard: a query holding the site's own slices is refused before the teacher runs.

A coordinator could send the site's private slices back as "proxy" slices and learn the
teacher's answers on its own training data (a membership-inference probe). Before a query is
answered, the egress gate (:mod:`site_node.egress`) screens its images against fingerprints of
every private slice of the serving teacher's cases (train, val and test of its ``split.json``),
prepared with the teacher's plan exactly as the site sees them:

* an exact hash: sha256 of the slice's float32 bytes (:func:`common.protocol.slice_hash`);
* a near-duplicate test: each slice area-averaged to ``R x R`` (``R`` = policy
  ``membership.resolution``, default 16), made zero-mean and unit-norm; a query slice whose
  correlation with any private slice is ``>= membership.max_correlation`` (default 0.98) is
  a member. The correlation ignores brightness/contrast changes and light noise (averaging
  ``S/R x S/R`` pixels divides its std by ``S/R``). Flat slices (no structure) never match.

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


@dataclass(frozen=True)
class Fingerprints:
    """The private slices of one teacher: ``hashes`` (slice_hash of each prepared slice) and
    ``lowres`` ``(M, R*R)`` unit rows of the non-flat ones; ``teacher``: the sha256 of the
    ``teacher.json`` they were made for."""

    teacher: str
    resolution: int
    hashes: frozenset[str]
    lowres: np.ndarray

    def save(self, path: Path) -> None:
        """Write ``path`` (npz, no pickles) atomically."""
        def write(fh: IO[bytes]) -> None:
            np.savez(fh, teacher=np.array(self.teacher), resolution=np.array(self.resolution),
                     hashes=np.array(sorted(self.hashes), dtype="U64"),
                     lowres=self.lowres.astype(np.float16))

        atomic_write(path, write)

    @staticmethod
    def load(path: Path) -> Fingerprints:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            return Fingerprints(str(z["teacher"]), int(z["resolution"]),
                                frozenset(str(h) for h in z["hashes"]),
                                z["lowres"].astype(np.float32))


def card_digest(teacher: Path) -> str:
    """sha256 of ``teacher/teacher.json`` (a retrained teacher gets new fingerprints)."""
    return hashlib.sha256((teacher / "teacher.json").read_bytes()).hexdigest()


def private_slices(data: Path, teacher: Path) -> np.ndarray:
    """``(M, S, S)`` float32: every slice of the teacher's cases, prepared by its plan."""
    from common.data.layout import discover_dataset
    from common.data.slices import load_volumes
    from common.data.split import load_split
    from common.predict import teacher_plan

    plan = teacher_plan(teacher)
    split = load_split(teacher / "split.json")
    vols = load_volumes(discover_dataset(data), [*split.train, *split.val, *split.test],
                        plan.size, plan=plan)
    return np.concatenate([v.image for v in vols]).astype(np.float32)


def build_fingerprints(slices: np.ndarray, teacher: str, resolution: int) -> Fingerprints:
    """Fingerprints of ``slices (M, S, S)``; flat slices keep only their hash."""
    low = lowres(slices, resolution)
    keep = np.abs(low).sum(axis=1) > 0
    return Fingerprints(teacher, resolution, frozenset(slice_hash(s) for s in slices),
                        low[keep])


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


def screen(images: np.ndarray, fp: Fingerprints, max_correlation: float) -> str | None:
    """Why ``images (N, 1, S, S)`` must not be answered (members found), or None."""
    n = len(images)
    exact = [i for i, im in enumerate(images) if slice_hash(im) in fp.hashes]
    if exact:
        return (f"membership guard: {len(exact)} of {n} query slices are this site's own "
                f"private slices (exact hash; first at index {exact[0]})")
    if n == 0 or len(fp.lowres) == 0:
        return None
    best = (lowres(images, fp.resolution) @ fp.lowres.T).max(axis=1)  # (N,)
    hits = best >= max_correlation
    if not hits.any():
        return None
    return (f"membership guard: {int(hits.sum())} of {n} query slices match this site's own "
            f"private slices (correlation {float(best.max()):.3f} >= {max_correlation} at "
            f"{fp.resolution}x{fp.resolution})")


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
