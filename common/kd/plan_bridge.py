"""Serve a teacher in its own preprocessing plan and answer on the query's grid.

Both roles call :func:`bridged_teacher_outputs`: the site's ``query.teacher_outputs`` handler and
the coordinator's ``--local`` path, so neither imports the other. The query slices come on the
*query grid*: the student's :class:`~common.data.plan.Plan` (in-plane spacing ``(qy, qx)`` mm,
side ``S``, normalisation). The teacher was trained on its own plan (``(ty, tx)`` mm, side ``T``).

Rules (query grid -> teacher grid -> query grid):

a. **Intensities.** MRI -> MRI: kept as is. Both are z-scored per volume after clipping to that
   volume's percentiles, a statistic of the anatomy and not of the grid, so the student's
   normalised slices are what the teacher's own preprocessing would have produced (the raw
   scale is unknown and is not needed). CT -> CT with other statistics: the student's
   ``(x - mean_q) / std_q`` is undone (HU clipped to the student's window) and the teacher's
   clip / mean / std applied. MRI <-> CT: kept as is with a warning (no meaningful map).
b. **Geometry.** Each slice is resampled bilinearly to ``round(S * q / t)`` px per axis (the
   same physical field at the teacher's spacing), then centre cropped / padded to ``T``
   (padding: the teacher plan's :meth:`~common.data.plan.Plan.pad_value`, as
   :func:`common.data.native.prepare_loaded` pads). The proxy masks follow with nearest neighbour.
c. The teacher runs there (:func:`common.kd.teacher_outputs.teacher_outputs`).
d. **Logits** are mapped back, never labels: un-crop / un-pad to the resampled field, then
   bilinear resampling of the logits to ``S x S``. Query pixels the teacher never saw (its
   ``T`` grid is smaller than the field) get the slice's *background logit*: the mean logit
   vector over the pixels the teacher predicted as background (zeros if it predicted none).
   With ``whole_field=True`` (opt-in, see below) and a field wider than ``T`` (the teacher's
   canvas shows only its centre) the logits come from the **whole field** instead:
   the resampled field, padded to at least ``T`` with the teacher's pad value, is covered by
   ``T x T`` windows overlapping by half and the windows' logits are blended with a Gaussian
   importance map (MONAI's sliding window, :func:`common.data.window.window_blend`, as at
   inference); on the pixels the centre tile covers its own logits are kept unchanged (a
   teacher trained on centred crops answers best there, and a field that fits is answered
   exactly as before), then everything is resampled to ``S x S``: every query pixel has an
   answer of the teacher, none gets the made-up background logit. Not the default: a teacher
   trained on centred crops may carry a positional prior that off-centre windows turn into
   false positives (tests/common/test_plan_bridge.py: the oracle labels the ring around the
   organ there), which the background logit avoided; the windows pay off for teachers
   trained over the whole field (:class:`common.data.slices.SliceDataset` crops).
e. **Attention maps** come from the **centre tile only** (the ``T x T`` crop of rule b): they
   are functions of the teacher's inner features, which a blend of output logits does not
   give, and tiling them would need a per-tap blend of feature maps. They are resampled in
   physical space: bilinear to the teacher's pixel grid, un-crop / un-pad (pixels outside the
   centre tile: 0, no activation), bilinear to the query's map grid (the same fraction of
   ``S`` as the teacher's map was of ``T``: ``S/2`` and ``S/8`` for the EMKD taps), then, for
   the Zagoruyko form, re-normalised to unit L2 norm (paper form: only interpolated).
f. **Region contrast** scalars are cosines of the two class prototypes of a feature map: they
   are computed on the teacher grid (the centre tile) with the proxy mask mapped there
   (nearest) and returned as is (a cosine has no grid).

When the teacher's plan has the query's spacing and side (:func:`same_grid`), or either plan
has no spacing, the geometry is the identity: the slices (after rule a, itself the identity for
the same normalisation) go to the teacher untouched and the result is exactly
:func:`teacher_outputs`'s, nothing mapped back. Either way the teacher runs once per slice
through :func:`teacher_outputs` (plus the windows of rule d's whole field when asked).
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from common.data.native import place, resize_stack, unplace
from common.data.plan import Plan
from common.data.window import window_blend
from common.kd.functional import unit_maps
from common.kd.targets import FeatureTaps, TeacherTargets
from common.kd.teacher_outputs import teacher_outputs
from common.models.base import SegModel
from common.teacher_fields import at_sizes
from common.training import autocast

log = logging.getLogger(__name__)
__all__ = ["bridge_hazards", "bridged_teacher_outputs", "renormalise", "same_grid",
           "to_teacher_grid", "whole_field_logits"]


def same_grid(query: Plan, teacher: Plan) -> bool:
    """True when both plans put slices on the same grid (spacing within 1e-6 mm, same side)."""
    if query.size != teacher.size:
        return False
    if query.spacing is None or teacher.spacing is None:
        return query.spacing is None and teacher.spacing is None
    return all(abs(a - b) <= 1e-6 for a, b in zip(query.spacing, teacher.spacing, strict=True))


def renormalise(images: np.ndarray, query: Plan, teacher: Plan) -> np.ndarray:
    """Rule (a): ``images`` normalised by ``query``'s plan -> as ``teacher``'s plan would."""
    if query.norm != teacher.norm:
        log.warning("query slices are %s-normalised, the teacher expects %s: kept as is",
                    query.norm, teacher.norm)
        return images
    if query.norm == "mri" or query.ct_params() == teacher.ct_params():
        return images
    _, q_mean, q_std = query.ct_params()
    (lo, hi), t_mean, t_std = teacher.ct_params()
    hu = images.astype(np.float64) * q_std + q_mean
    return ((np.clip(hu, lo, hi) - t_mean) / max(t_std, 1e-8)).astype(np.float32)


def bridge_hazards(query: Plan, teacher: Plan) -> list[str]:
    """What in the two plans can make a sound teacher answer nothing on the query slices
    (plan-level, before any slice is sent; each an observed failure mode):

    * **CT in other units**: the teacher's clip window and the query's do not overlap, e.g. a
      site whose files store HU + 1024 without the rescale intercept (rule a maps the query's
      HU into the teacher's window: every pixel clips to one value).
    * **A padding ring**: the teacher's canvas is wider than the query's field, so rule b
      pads the slice (:meth:`~common.data.plan.Plan.pad_value`), a flat area the teacher's
      own data may never show (padding with each volume's minimum made a PSPNet teacher
      predict nothing; with the pad value it still may answer worse: check its proxy Dice)."""
    out = []
    if query.norm == teacher.norm == "ct":
        (qlo, qhi), q_mean, _ = query.ct_params()
        (tlo, thi), t_mean, _ = teacher.ct_params()
        if qhi < tlo or thi < qlo:
            out.append(f"CT in other units: the teacher's window [{tlo:.0f}, {thi:.0f}] "
                       f"(foreground mean {t_mean:.0f}) does not overlap the query's "
                       f"[{qlo:.0f}, {qhi:.0f}] (mean {q_mean:.0f}); do its files store HU + "
                       "an offset (no rescale intercept)? Every query pixel clips to one value")
    if query.spacing is not None and teacher.spacing is not None:
        field = [query.size * q for q in query.spacing]
        canvas = [teacher.size * t for t in teacher.spacing]
        if any(c > 1.05 * f for c, f in zip(canvas, field, strict=True)):
            out.append(f"padding ring: the teacher's canvas ({canvas[0]:.0f} x {canvas[1]:.0f} "
                       f"mm) is wider than the query field ({field[0]:.0f} x {field[1]:.0f} mm); "
                       "the slices are padded, which the teacher may not have seen over that "
                       "area: check its proxy Dice")
    return out


@functools.lru_cache(maxsize=256)
def _warn_hazards(query_json: str, teacher_json: str) -> tuple[str, ...]:
    """Log :func:`bridge_hazards` once per (query plan, teacher plan) pair and process."""
    found = tuple(bridge_hazards(Plan.model_validate_json(query_json),
                                 Plan.model_validate_json(teacher_json)))
    for hazard in found:
        log.warning("teacher plan vs query plan: %s", hazard)
    return found


def _field_hw(query: Plan, teacher: Plan) -> tuple[int, int]:
    """Side of the query field in teacher pixels, ``(h2, w2)``."""
    assert query.spacing is not None and teacher.spacing is not None
    s = query.size
    return (max(1, round(s * query.spacing[0] / teacher.spacing[0])),
            max(1, round(s * query.spacing[1] / teacher.spacing[1])))


def _offset(hw: tuple[int, int], side: int) -> tuple[int, int]:
    return (side - hw[0]) // 2, (side - hw[1]) // 2


def to_teacher_grid(images: np.ndarray, masks: np.ndarray, query: Plan, teacher: Plan
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Rule (b): ``images (N,1,S,S)``, ``masks (N,S,S)`` -> ``(N,1,T,T)``, ``(N,T,T)``."""
    hw = _field_hw(query, teacher)
    off, side = _offset(hw, teacher.size), teacher.size
    img = resize_stack(images[:, 0].astype(np.float32), hw, linear=True)
    out = place(img, side, off, teacher.pad_value())
    msk = place(resize_stack(masks.astype(np.uint8), hw, linear=False), side, off, 0)
    return out[:, None].astype(np.float32), msk.astype(np.uint8)


def _background_logit(logits: np.ndarray) -> np.ndarray:
    """``(N,K,T,T)`` -> ``(N,K,1,1)``: mean logits over each slice's predicted background."""
    bg = logits.argmax(axis=1) == 0
    out = np.zeros((*logits.shape[:2], 1, 1), np.float32)
    for i in range(len(logits)):
        if bg[i].any():
            out[i, :, 0, 0] = logits[i][:, bg[i]].mean(axis=1)
    return out


def _logits_back(logits: np.ndarray, query: Plan, teacher: Plan) -> np.ndarray:
    """Rule (d): teacher logits ``(N,K,T,T)`` -> query-grid logits ``(N,K,S,S)``."""
    n, k = logits.shape[:2]
    hw = _field_hw(query, teacher)
    field = unplace(logits, hw, _offset(hw, teacher.size), _background_logit(logits))
    back = resize_stack(field.reshape(n * k, *hw), (query.size, query.size), linear=True)
    return back.reshape(n, k, query.size, query.size)


@torch.no_grad()
def whole_field_logits(model: SegModel, images: np.ndarray, query: Plan, teacher: Plan,
                       device: torch.device, batch_size: int = 16,
                       centre: np.ndarray | None = None) -> np.ndarray:
    """Rule (d), field wider than ``T``: query slices ``(N,1,S,S)`` (teacher-normalised) ->
    query-grid logits ``(N,K,S,S)`` blended over ``T x T`` windows of the whole field;
    ``centre``: the centre tile's logits ``(N,K,T,T)`` (rule b), kept as they are on the pixels
    the centre tile covers (the windows fill in the rest)."""
    n, s, side = len(images), query.size, teacher.size
    hw = _field_hw(query, teacher)
    img = resize_stack(images[:, 0].astype(np.float32), hw, linear=True)
    grid = (max(side, hw[0]), max(side, hw[1]))
    off = ((grid[0] - hw[0]) // 2, (grid[1] - hw[1]) // 2)
    field = place(img, grid, off, teacher.pad_value())
    model = model.to(device).eval()

    def logits_fn(x: np.ndarray) -> np.ndarray:
        with autocast(device):
            out = model(torch.from_numpy(np.ascontiguousarray(x[:, None])).to(device))
        return out.float().cpu().numpy()

    blended = window_blend(logits_fn, field, side, batch_size=batch_size)
    if centre is not None:  # where rule (b)'s centre tile lies on the padded field
        (y0, x0), (ty, tx) = off, _offset(hw, side)
        blended[:, :, y0 - ty:y0 - ty + side, x0 - tx:x0 - tx + side] = centre
    k = blended.shape[1]
    back = unplace(blended, hw, off, 0.0)  # the resampled field, without the padding
    return resize_stack(back.reshape(n * k, *hw), (s, s), linear=True).reshape(n, k, s, s)


def _attention_back(at: torch.Tensor, query: Plan, teacher: Plan, size: tuple[int, int],
                    at_form: Literal["zagoruyko", "paper"]) -> torch.Tensor:
    """Rule (e): teacher-grid maps ``(N,h,w)`` -> the query's map grid ``(N, *size)``."""
    side, hw = teacher.size, _field_hw(query, teacher)
    full = F.interpolate(at[:, None].float(), size=(side, side), mode="bilinear",
                         align_corners=False)[:, 0].numpy()
    field = unplace(full, hw, _offset(hw, side), 0.0)
    out = torch.from_numpy(resize_stack(field, size, linear=True))
    return unit_maps(out) if at_form == "zagoruyko" else out


def bridged_teacher_outputs(
    model: SegModel, images: np.ndarray, masks: np.ndarray, device: torch.device,
    query: Plan | None, teacher: Plan | None, batch_size: int = 16,
    at_form: Literal["zagoruyko", "paper"] = "zagoruyko", p: int = 2,
    taps: FeatureTaps = "emkd", whole_field: bool = False,
) -> TeacherTargets:
    """The teacher's targets for query slices, computed in the teacher's own plan.

    Args:
        images: ``(N, 1, S, S)`` float32 on the ``query`` plan's grid; masks ``(N, S, S)``.
        query / teacher: the two plans; when either is None or has no spacing (legacy "fit"
            plans: no physical grid to map), the slices go to the teacher as they are.
        whole_field: logits of a field wider than the teacher's canvas from Gaussian-blended
            windows over the whole field (rule d); attention maps and RC stay the centre
            tile's (rules e, f).
    Returns:
        J = 1 TeacherTargets on the CPU with exactly :func:`teacher_outputs`'s shapes for side
        ``S`` (module rules a-f).
    """
    if query is not None and images.shape[-1] != query.size:
        raise ValueError(f"query slices of side {images.shape[-1]} != query plan size "
                         f"{query.size}")
    if query is None or teacher is None:
        return teacher_outputs(model, images, masks, device, batch_size, at_form, p, taps)
    _warn_hazards(query.model_dump_json(), teacher.model_dump_json())
    images = renormalise(images, query, teacher)
    if same_grid(query, teacher) or query.spacing is None or teacher.spacing is None:
        return teacher_outputs(model, images, masks, device, batch_size, at_form, p, taps)
    t_img, t_msk = to_teacher_grid(images, masks, query, teacher)
    t = teacher_outputs(model, t_img, t_msk, device, batch_size, at_form, p, taps)
    if whole_field and max(_field_hw(query, teacher)) > teacher.size:  # centre tile: part
        logits = whole_field_logits(model, images, query, teacher, device, batch_size,
                                    centre=t.logits[0].numpy())
    else:
        logits = _logits_back(t.logits[0].numpy(), query, teacher)
    first, second = at_sizes(query.size, taps)  # the sizes teacher_outputs gives for side S
    return TeacherTargets(
        logits=torch.from_numpy(logits)[None],
        at_early=_attention_back(t.at_early[0], query, teacher, first, at_form)[None],
        at_deep=_attention_back(t.at_deep[0], query, teacher, second, at_form)[None],
        rc_early=t.rc_early, rc_deep=t.rc_deep)
