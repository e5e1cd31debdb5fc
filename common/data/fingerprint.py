"""Dataset fingerprint (as nnU-Net's): aggregate geometry, intensity and label statistics.

Computing it reads every case exactly as training does, so it refuses what training refuses
(unreadable files, image / label geometry mismatch, multi-label files without a target choice,
4D labels). It records AGGREGATES only: counts, medians / ranges, percentiles of voxel samples,
voxel counts per label value; no pixel data, no case ids. It stays on the site (it is not in
the egress allowlist; docs/PRIVACY.md).

Axis order: shapes ``(D, H, W)`` and spacings ``(sz, sy, sx)`` mm of the canonical RAS arrays.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from common.config import StrictModel
from common.data.ct_units import STORED_OFFSET, stored_offset
from common.data.errors import data_error
from common.data.geometry import axcodes, check_geometry, check_pair_headers
from common.data.labels import (
    declared_values,
    is_union,
    resolve_target,
    select_target,
    value_name,
)
from common.data.layout import CaseRef, DatasetInfo
from common.data.nifti import Reader, read_nifti
from common.data.plan import Plan, plan_from_fingerprint

_SAMPLE_ALL = 20_000
_SAMPLE_FG = 10_000
PERCENTILES = (0.5, 50.0, 99.5)


class IntensityStats(StrictModel):
    """Percentiles, mean and sd of pooled voxel samples (up to a fixed count per case)."""

    p0_5: float
    p50: float
    p99_5: float
    mean: float
    std: float


class Fingerprint(StrictModel):
    """Aggregate description of a dataset (see module doc for the axis order)."""

    version: int = 1
    dataset: str
    modality: str
    n_cases: int
    shape_median: list[float]
    shape_min: list[int]
    shape_max: list[int]
    spacing_median: list[float]
    spacing_min: list[float]
    spacing_max: list[float]
    orientations: dict[str, int]
    intensity: IntensityStats
    foreground: IntensityStats | None
    labels_declared: dict[str, str]
    label_voxels: dict[str, int]
    target_labels: list[int] | None
    target_name: str | None
    target_voxels: int
    hu_offset_cases: int = 0  # CT cases stored as HU + 1024, read as HU (common.data.ct_units)


def _stats(samples: list[np.ndarray]) -> IntensityStats | None:
    """Pooled percentiles / mean / sd, or None when there is nothing."""
    pool = np.concatenate(samples) if samples else np.zeros(0)
    if pool.size == 0:
        return None
    p = np.percentile(pool, PERCENTILES)
    return IntensityStats(p0_5=float(p[0]), p50=float(p[1]), p99_5=float(p[2]),
                          mean=float(pool.mean()), std=float(pool.std()))


def _sample(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` values drawn without replacement (all when fewer)."""
    return values if values.size <= n else rng.choice(values, n, replace=False)


class _Acc:
    """Per-case accumulation (aggregated in :func:`compute_fingerprint`)."""

    def __init__(self, ct: bool = False) -> None:
        self.ct = ct  # CT: values read as HU (common.data.ct_units), as normalise reads them
        self.hu_offset_cases = 0
        self.shapes: list[tuple[int, ...]] = []
        self.spacings: list[tuple[float, ...]] = []
        self.orient: Counter[str] = Counter()
        self.all: list[np.ndarray] = []
        self.fg: list[np.ndarray] = []
        self.labels: Counter[str] = Counter()
        self.target = 0
        self.rng = np.random.default_rng(0)

    def add(self, ref: CaseRef, targets: list[int] | None, union: bool,
            declared: list[int] | None, read: Reader = read_nifti) -> None:
        """Check both headers, then read (with ``read``), check and summarise one case."""
        if ref.label is not None:
            check_pair_headers(ref.image, ref.label)
        image = read(ref.image, first_channel=True)
        vol, spacing = image.canonical_zyx()
        offset = stored_offset(vol) if self.ct else 0.0
        self.hu_offset_cases += int(offset > 0)
        vol = vol - np.float32(offset) if offset else vol
        self.shapes.append(tuple(int(s) for s in vol.shape))
        self.spacings.append(spacing)
        self.orient[axcodes(image.affine)] += 1
        self.all.append(_sample(vol.ravel(), _SAMPLE_ALL, self.rng))
        if ref.label is None:
            return
        label = read(ref.label, allow_empty=True)
        check_geometry(image, label)
        self.target += int(select_target(label.data, targets, ref.label, union=union,
                                         declared=declared).sum())
        values, counts = np.unique(label.data, return_counts=True)
        self.labels.update({str(int(v)): int(c) for v, c in zip(values, counts, strict=True)})
        fg = image.data[label.data != 0]
        self.fg.append(_sample(fg - np.float32(offset) if offset else fg, _SAMPLE_FG, self.rng))


def _found_name(name: str | None, label_voxels: Counter[str]) -> str | None:
    """Without a declared name, the target is named after the values found (``label 2``)."""
    if name is not None:
        return name
    found = sorted(int(v) for v in label_voxels if int(v) != 0)
    return "/".join(value_name(v) for v in found) or None


def compute_fingerprint(info: DatasetInfo, label: str | None = None,
                        case_ids: list[str] | None = None,
                        read: Reader = read_nifti) -> Fingerprint:
    """Fingerprint of ``info``'s cases (all, or ``case_ids``) with the target from ``label``;
    ``read``: how each file is read (a :class:`~common.data.nifti.ReadOnce` keeps them)."""
    targets, name = resolve_target(info.labels, label, info.name)
    union, declared = is_union(targets, name), declared_values(info.labels)
    refs = [c for c in info.cases if case_ids is None or c.case_id in set(case_ids)]
    if not refs:
        raise data_error(info.name, "no cases to fingerprint")
    acc = _Acc(ct=info.modality.upper() == "CT")
    for ref in refs:
        acc.add(ref, targets, union, declared, read)
    shapes, spacings = np.array(acc.shapes), np.array(acc.spacings)
    intensity = _stats(acc.all)
    assert intensity is not None  # every case has voxels
    return Fingerprint(
        dataset=info.name, modality=info.modality, n_cases=len(refs),
        shape_median=np.median(shapes, 0).tolist(), shape_min=shapes.min(0).tolist(),
        shape_max=shapes.max(0).tolist(), spacing_median=np.median(spacings, 0).tolist(),
        spacing_min=spacings.min(0).tolist(), spacing_max=spacings.max(0).tolist(),
        orientations=dict(acc.orient), intensity=intensity, foreground=_stats(acc.fg),
        labels_declared=dict(info.labels), label_voxels=dict(sorted(acc.labels.items())),
        target_labels=targets, target_name=_found_name(name, acc.labels),
        target_voxels=acc.target, hu_offset_cases=acc.hu_offset_cases,
    )


def ct_units_note(fp: Fingerprint) -> str | None:
    """A note on a CT dataset's units: how many cases were stored as HU + 1024 and are read
    as HU (:mod:`common.data.ct_units`), or a warning when the values, so read, still do not
    look like HU: in HU, air is -1000 and the median voxel of a body scan lies near soft
    tissue (0..100), so a median above 400 with no value below -50 suggests another offset. A
    teacher trained on such values answers nothing on HU data (the coordinator's proxy), nor
    a student scored there."""
    if fp.modality.upper() != "CT":
        return None
    it = fp.intensity
    if it.p0_5 < -50 or it.p50 <= 400:
        if not fp.hu_offset_cases:
            return None
        return (f"{fp.dataset}: {fp.hu_offset_cases} of {fp.n_cases} CT case(s) store HU + "
                f"{STORED_OFFSET:.0f} (no rescale intercept): read as HU, the files are "
                "left as they are")
    return (f"{fp.dataset}: CT values do not look like HU (median {it.p50:.0f}, 0.5th "
            f"percentile {it.p0_5:.0f}; in HU air is -1000 and soft tissue 0..100): stored "
            "values with an offset (HU + 1024?); convert to HU (site-node import-dicom applies "
            "the rescale) before training")


def save_fingerprint(fp: Fingerprint, path: Path) -> Path:
    """Write strict JSON (no NaN / Infinity)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fp.model_dump(mode="json"), indent=2, allow_nan=False) + "\n",
                    encoding="utf-8")
    return path


def load_fingerprint(path: Path) -> Fingerprint:
    """Read a fingerprint written by :func:`save_fingerprint`."""
    return Fingerprint.model_validate_json(path.read_text(encoding="utf-8"))


def plan_for_dataset(info: DatasetInfo, size: int | None = None, label: str | None = None,
                     case_ids: list[str] | None = None, cache: Path | None = None,
                     fill: bool = False, read: Reader = read_nifti,
                     fingerprint: Fingerprint | None = None) -> Plan:
    """Fingerprint ``info`` (the ``case_ids``, e.g. the training split) and plan from it.

    ``cache``: a ``plan.json`` reused when it exists and matches the requested ``size`` and
    target labels (``--resume`` keeps one plan per run), written otherwise.
    ``size``/``label``: see :func:`plan_from_fingerprint` and
    :func:`common.data.labels.resolve_target`. ``fill``: see :func:`plan_from_fingerprint`
    (not with ``cache``). ``read``: see :func:`compute_fingerprint`. ``fingerprint``: the
    fingerprint of exactly those cases when the caller already has it (not computed again).
    """
    if cache is not None and cache.is_file():
        cached = Plan.model_validate_json(cache.read_text(encoding="utf-8"))
        values, _ = resolve_target(info.labels, label, info.name)
        if cached.labels == values and size in (None, cached.size):
            return cached
    fp = fingerprint or compute_fingerprint(info, label, case_ids, read)
    plan = plan_from_fingerprint(fp, size=size, fill=fill)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(plan.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return plan


def format_fingerprint(fp: Fingerprint) -> str:
    """Human-readable multi-line summary (what ``site-node check`` prints)."""
    def trip(v: list[float] | list[int]) -> str:
        return " x ".join(f"{float(x):g}" for x in v)

    fg = fp.foreground
    lines = [
        f"dataset {fp.dataset}: {fp.n_cases} cases, modality {fp.modality}",
        f"shape (z, y, x): median {trip(fp.shape_median)}, min {trip(fp.shape_min)}, "
        f"max {trip(fp.shape_max)}",
        f"spacing (z, y, x) mm: median {trip(fp.spacing_median)}, "
        f"range {trip(fp.spacing_min)} .. {trip(fp.spacing_max)}",
        "orientations: " + ", ".join(f"{k} {v}" for k, v in sorted(fp.orientations.items())),
        f"intensity: p0.5 {fp.intensity.p0_5:g}, median {fp.intensity.p50:g}, "
        f"p99.5 {fp.intensity.p99_5:g}",
        "foreground intensity: " + ("none" if fg is None else
                                    f"p0.5 {fg.p0_5:g}, p99.5 {fg.p99_5:g}, mean {fg.mean:g}, "
                                    f"sd {fg.std:g}"),
        "label voxels: " + ", ".join(f"{k}: {v}" for k, v in fp.label_voxels.items()),
        f"target: {fp.target_name or 'every non-zero value'} "
        f"(values {fp.target_labels or 'non-zero'}), {fp.target_voxels} voxels",
    ]
    return "\n".join(lines)


__all__ = ["Fingerprint", "IntensityStats", "compute_fingerprint", "format_fingerprint",
           "load_fingerprint", "plan_for_dataset", "save_fingerprint"]
