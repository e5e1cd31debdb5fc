"""Preprocessing plan: target in-plane spacing, network size, normalisation, target label.

Axis convention (everywhere in ``common.data``): volumes are reoriented to canonical RAS and
stored as ``(D, H, W) = (z, y, x)`` arrays; spacings are ``(sz, sy, sx)`` mm and the plan's
in-plane ``spacing`` is ``(sy, sx)`` mm of that array.

Normalisation (``norm``):

* ``"mri"``: clip each volume to its own ``mri_percentiles`` (default 0.5 / 99.5), then z-score
  with that volume's mean / sd (MRI has no absolute scale).
* ``"ct"``: nnU-Net's CT scheme: clip to ``ct_clip`` (0.5 / 99.5 percentiles of the *foreground*
  voxels of the whole training set, from the fingerprint), then ``(x - ct_mean) / ct_std``
  with the global foreground mean / sd. CT values are read as HU first (a volume stored as
  HU + 1024 is shifted back: :mod:`common.data.ct_units`).

Padding (:meth:`Plan.pad_value`): where a canvas is wider than a slice's field, the pixels
outside the field get one value of the normalised scale, independent of the volume: ``0`` for
MRI (the volume's mean after z-scoring; nnU-Net's convention, and what the augmentation's
rotations fill with), the normalised lower clip for CT (air). Padding with each volume's own
minimum instead (its darkest, noisiest tail, -4.5 sd on a wide-field MRI) made a sound PSPNet
teacher answer nothing on such slices (docs/BENCHMARKS.md, "the padding ring").

The plan is written into ``teacher.json`` (``"plan"``) so that scoring and predicting reuse it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator

from common.config import StrictModel

MAX_SIZE = 384
SIZE_MULTIPLE = 32
# Used only when no fingerprint is available (legacy fallback): the old fixed soft-tissue
# window (-160, 240) HU mapped exactly to [-1, 1].
_FALLBACK_CT_CLIP, _FALLBACK_CT_MEAN, _FALLBACK_CT_STD = (-160.0, 240.0), 40.0, 200.0


class Plan(StrictModel):
    """How every slice is prepared for the network (and how predictions are mapped back).

    ``spacing``: target in-plane spacing ``(sy, sx)`` mm of the canonical ``(z, y, x)`` array;
    ``None`` means *fit*: each slice is scaled uniformly (aspect kept) so its longer side
    equals ``size`` (fallback when no fingerprint exists). ``labels``: foreground label values
    that make up the target (their union); ``None`` means every non-zero value (binary masks,
    0/255 masks).
    """

    version: int = 1
    size: int = Field(gt=0, description="network input is (size, size)")
    spacing: tuple[float, float] | None = None
    norm: Literal["mri", "ct"] = "mri"
    mri_percentiles: tuple[float, float] = (0.5, 99.5)
    ct_clip: tuple[float, float] | None = None
    ct_mean: float | None = None
    ct_std: float | None = None
    labels: list[int] | None = None
    label_name: str | None = None

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not all(math.isfinite(s) and s > 0 for s in v):
            raise ValueError(f"spacing must be positive and finite, got {v}")
        return v

    def ct_params(self) -> tuple[tuple[float, float], float, float]:
        """``(clip, mean, std)`` for CT (the legacy fixed window when the plan has none)."""
        clip = self.ct_clip or _FALLBACK_CT_CLIP
        mean = _FALLBACK_CT_MEAN if self.ct_mean is None else self.ct_mean
        std = _FALLBACK_CT_STD if self.ct_std is None else self.ct_std
        return (float(clip[0]), float(clip[1])), float(mean), float(std)

    def pad_value(self) -> float:
        """The normalised value of canvas padding (module doc): 0 for MRI, air for CT."""
        if self.norm == "mri":
            return 0.0
        (lo, _), mean, std = self.ct_params()
        return float((lo - mean) / max(std, 1e-8))


def default_plan(modality: str, size: int, labels: list[int] | None = None) -> Plan:
    """Plan without a fingerprint: fit each slice into ``size`` (aspect kept), legacy CT window."""
    return Plan(size=size, spacing=None, norm="ct" if modality.upper() == "CT" else "mri",
                labels=labels)


def default_size(median_hw: tuple[float, float]) -> int:
    """Longer median side rounded up to a multiple of 32, capped at :data:`MAX_SIZE`."""
    side = max(median_hw)
    return int(min(MAX_SIZE, max(SIZE_MULTIPLE, math.ceil(side / SIZE_MULTIPLE) * SIZE_MULTIPLE)))


def plan_from_fingerprint(
    fp: Any, size: int | None = None, spacing: tuple[float, float] | None = None,
    labels: list[int] | None = None, label_name: str | None = None, fill: bool = False,
) -> Plan:
    """Plan for a dataset from its fingerprint (:class:`common.data.fingerprint.Fingerprint`).

    ``spacing`` default: the median in-plane spacing; when the median field of view
    (median shape x median spacing) would not fit in ``size`` px, the spacing is coarsened
    uniformly until it does (whole slices stay visible). ``fill``: the spacing at which the
    median field of view fills ``size`` exactly, finer than the median when ``size`` is larger
    than the median slice (upsampling instead of an empty canvas). ``size`` default:
    :func:`default_size` of the median in-plane shape (capped at 384). ``labels`` default: the
    fingerprint's resolved target labels.
    """
    med_sp = (float(fp.spacing_median[1]), float(fp.spacing_median[2]))
    med_hw = (float(fp.shape_median[1]), float(fp.shape_median[2]))
    size = default_size(med_hw) if size is None else int(size)
    if spacing is None:
        factor = max(med_hw) / size if fill else max(1.0, max(med_hw) / size)
        spacing = (round(med_sp[0] * factor, 6), round(med_sp[1] * factor, 6))
    norm: Literal["mri", "ct"] = "ct" if fp.modality.upper() == "CT" else "mri"
    ct: dict[str, Any] = {}
    if norm == "ct" and fp.foreground is not None:
        f = fp.foreground
        ct = {"ct_clip": (f.p0_5, f.p99_5), "ct_mean": f.mean, "ct_std": max(f.std, 1e-8)}
    return Plan(size=size, spacing=spacing, norm=norm, **ct,
                labels=fp.target_labels if labels is None else labels,
                label_name=fp.target_name if label_name is None else label_name)
