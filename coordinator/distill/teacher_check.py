"""No silent mismatch: each teacher's plan is logged and its outputs are scored.

Before any student is trained, every teacher is scored on the labelled proxy slices with the very
outputs the coordinator received (Dice of the argmax of that teacher's own logits against the
proxy masks, pooled over all slices). A teacher far below its own reported validation Dice was
most likely fed slices it was not trained for (a lost or mismatched plan): the coordinator warns
below :data:`WARN_RATIO` x its validation Dice and refuses (:class:`TeacherMismatchError`)
below ``teacher_proxy_dice_floor`` x its validation Dice when that floor is configured.
A teacher without a validation Dice (None / NaN: no validation cases) is only logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from common.data.plan import Plan
from coordinator.distill.cache import Targets

log = logging.getLogger(__name__)
WARN_RATIO = 0.8
__all__ = ["WARN_RATIO", "TeacherMismatchError", "check_teachers", "peer_outliers", "plan_line",
           "proxy_dice"]


class TeacherMismatchError(RuntimeError):
    """A teacher scores far below its own validation Dice on the proxy slices."""


def plan_line(plan: Plan | None) -> str:
    """``"0.75x0.75 mm, 64 px, mri"`` (``"no plan"`` / ``"fit"`` spacing when unknown)."""
    if plan is None:
        return "no plan"
    sp = "fit" if plan.spacing is None else f"{plan.spacing[0]:g}x{plan.spacing[1]:g} mm"
    return f"{sp}, {plan.size} px, {plan.norm}"


def proxy_dice(logits: np.ndarray, masks: np.ndarray) -> float:
    """Pooled foreground Dice of ``argmax(logits (N,K,S,S))`` vs ``masks (N,S,S)`` (1 if both
    are empty)."""
    pred = np.asarray(logits).argmax(axis=1) > 0
    gt = np.asarray(masks) > 0
    denom = int(pred.sum()) + int(gt.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & gt).sum()) / denom


def _streamed_dice(targets: Targets, j: int, masks: np.ndarray, chunk: int = 256) -> float:
    """:func:`proxy_dice` of teacher ``j``, pooled over chunks of slices (same counts)."""
    from coordinator.distill.cache import iter_chunks, read_rows

    inter = total = 0
    for a, part in iter_chunks(targets.select([j]), chunk):
        pred = part.logits[0].float().numpy().argmax(axis=1) > 0
        gt = read_rows(masks, a, a + chunk) > 0
        inter, total = inter + int((pred & gt).sum()), total + int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def check_teachers(names: Sequence[str], targets: Targets, masks: np.ndarray,
                   val_dice: Mapping[str, float | None], floor: float | None = None
                   ) -> dict[str, float]:
    """Score teacher ``j`` (``names[j]``) of ``targets`` on the proxy ``masks (N,S,S)``; warn /
    refuse as the module says. Returns ``{name: proxy Dice}``."""
    scores, bad = {}, []
    for j, name in enumerate(names):
        score = _streamed_dice(targets, j, masks)
        scores[name] = score
        val = val_dice.get(name)
        if val is None or not math.isfinite(val) or val <= 0:
            log.info("teacher %s: proxy Dice %.3f (no validation Dice to compare)", name, score)
            continue
        msg = f"teacher {name}: proxy Dice {score:.3f} vs its validation Dice {val:.3f}"
        if floor is not None and score < floor * val:
            bad.append(f"{msg} (< {floor:g} x)")
        elif score < WARN_RATIO * val:
            log.warning("%s: far below (a lost or mismatched plan, or the proxy set is unlike "
                        "this site's data)", msg)
        else:
            log.info(msg)
    if bad:
        raise TeacherMismatchError("; ".join(bad) + " (teacher_proxy_dice_floor)")
    for line in peer_outliers(scores, val_dice):
        log.warning("%s", line)
    return scores


def peer_outliers(scores: Mapping[str, float], val_dice: Mapping[str, float | None]
                  ) -> list[str]:
    """One warning per teacher without a validation Dice whose proxy Dice is below
    :data:`WARN_RATIO` x the median of the other teachers' (it still gets a fusion weight: the
    adaptive rules then decide how much)."""
    out = []
    for name, score in scores.items():
        val = val_dice.get(name)
        if val is not None and math.isfinite(val) and val > 0:
            continue
        others = [v for n, v in scores.items() if n != name]
        if not others:
            continue
        ref = float(np.median(others))
        if score < WARN_RATIO * ref:
            out.append(f"teacher {name}: proxy Dice {score:.3f}, far below the other teachers' "
                       f"median {ref:.3f}, and no validation Dice of its own (no held-out case "
                       "at its site): check that site's teacher")
    return out
