"""The teacher-output fields: names, stored dtypes and per-slice shapes, in one place.

A site answers a query with, per proxy slice, the teacher's logits, two attention maps and two
region-contrast scalars (never features, never weights). This module is the one list of those
fields; :class:`common.kd.targets.TeacherTargets` (the in-memory type), the teacher cache
(:mod:`coordinator.distill.cache`), the distillation dataset (:mod:`coordinator.distill.dataset`)
and the wire schema (:mod:`common.protocol`) all import it instead of restating it. It imports
neither torch nor numpy, so that ``common.protocol`` stays cheap to import.

Layouts, one per place the fields live (the same names, the same order everywhere):

* :class:`~common.kd.targets.TeacherTargets`: ``(J, B, ...)`` tensors, teacher axis first;
* *site arrays*: one site's answer for ``B`` slices, ``{name: (B, ...) array}``: what
  ``TeacherTargets.site_arrays`` gives (J = 1), what a query reply carries (logits as the
  site's codec encodes them, the rest in :data:`STORED_DTYPE`), what the coordinator decodes
  (``common.protocol.decode_teacher_arrays``) and what the cache writes, as received;
* the cache: one ``.npy`` of ``(N, ...)`` rows per field and site, in :data:`STORED_DTYPE`
  (fp16 maps, fp32 scalars), read back as float32 ``(J, b, ...)`` rows.

Per-slice shapes at query side ``S`` (:func:`slice_shapes`): ``logits (K, S, S)``;
``at_early`` / ``at_deep`` of :func:`at_sizes` (EMKD taps ``S/2`` and ``S/8``; decoder taps
``S/8`` and ``S/4``); ``rc_early`` / ``rc_deep`` scalars ``()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FieldKind = Literal["logits", "map", "scalar"]
FeatureTaps = Literal["emkd", "decoder"]

__all__ = ["AT_FIELDS", "FEATURE_FIELDS", "FIELD_NAMES", "GRID_FIELDS", "SCALAR_FIELDS",
           "STORED_DTYPE", "TARGET_FIELDS", "FeatureTaps", "TargetField", "at_sizes",
           "slice_shapes"]


@dataclass(frozen=True)
class TargetField:
    """One teacher-output field: ``name``, the dtype it is stored in on the wire (logits: the
    default fp16 codec) and in the cache, and its ``kind`` (class logits, attention map, or
    scalar), which fixes its per-slice shape (:func:`slice_shapes`)."""

    name: str
    dtype: str
    kind: FieldKind


TARGET_FIELDS: tuple[TargetField, ...] = (
    TargetField("logits", "float16", "logits"),
    TargetField("at_early", "float16", "map"),
    TargetField("at_deep", "float16", "map"),
    TargetField("rc_early", "float32", "scalar"),
    TargetField("rc_deep", "float32", "scalar"),
)
FIELD_NAMES = tuple(f.name for f in TARGET_FIELDS)
#: Fields with a pixel grid (moved with the slice by a geometric augmentation).
GRID_FIELDS = tuple(f.name for f in TARGET_FIELDS if f.kind != "scalar")
#: The two attention maps (``(early, deep)``).
AT_FIELDS = tuple(f.name for f in TARGET_FIELDS if f.kind == "map")
#: The two region-contrast scalars (``(early, deep)``).
SCALAR_FIELDS = tuple(f.name for f in TARGET_FIELDS if f.kind == "scalar")
#: Every field but the logits (which a site's codec encodes: ``common.compress``).
FEATURE_FIELDS = tuple(f.name for f in TARGET_FIELDS if f.kind != "logits")
STORED_DTYPE = {f.name: f.dtype for f in TARGET_FIELDS}

_AT_DIVISORS: dict[str, tuple[int, int]] = {"emkd": (2, 8), "decoder": (8, 4)}


def at_sizes(side: int, taps: FeatureTaps = "emkd") -> tuple[tuple[int, int], tuple[int, int]]:
    """Sizes ``((h0, w0), (h1, w1))`` of the early and deep attention maps for slices of side
    ``side``, whatever the teacher's own strides (agreed by every site, so answers stack):
    ``(S/2, S/8)`` for the EMKD taps, ``(S/8, S/4)`` for the decoder taps."""
    if taps not in _AT_DIVISORS:
        raise ValueError(f"unknown feature taps {taps!r}; valid: {', '.join(sorted(_AT_DIVISORS))}")
    a, b = _AT_DIVISORS[taps]
    return (side // a, side // a), (side // b, side // b)


def slice_shapes(side: int, num_classes: int, taps: FeatureTaps = "emkd"
                 ) -> dict[str, tuple[int, ...]]:
    """Per-slice shape of every field (in :data:`FIELD_NAMES` order) at side ``side``."""
    maps = dict(zip(AT_FIELDS, at_sizes(side, taps), strict=True))
    shape = {"logits": (num_classes, side, side), "map": (), "scalar": ()}
    return {f.name: maps[f.name] if f.kind == "map" else shape[f.kind] for f in TARGET_FIELDS}
