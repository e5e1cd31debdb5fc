"""Corrupt one site's teacher outputs, as a faulty or malicious site would send them.

Used by the robustness test and ``bench/bench_robustness.py`` to simulate a bad site: the
coordinator receives :class:`~common.kd.targets.TeacherTargets` of ``J`` sites stacked along
the teacher axis (``logits (J, B, K, H, W)``) and one of them is replaced by

* ``"random"``: i.i.d. Gaussian logits ``N(0, scale^2)`` of the same shape (a site returning
  noise; with ``scale = 4`` most pixels are confidently, randomly labelled);
* ``"inverted"``: the class channels swapped (``K = 2`` only), i.e. ``softmax`` gives
  ``1 - p``: the foreground is confidently inverted (a site with flipped labels).

Only the logits are corrupted (the issue's threat: "corrupted logits"); the attention maps and
region-contrast scalars of that site are left as sent. Nothing is modified in place.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import torch
from torch import Tensor

from common.kd.targets import TeacherTargets

__all__ = ["CORRUPTIONS", "Corruption", "corrupt_teacher", "invert_foreground", "random_logits"]

Corruption = Literal["random", "inverted"]
CORRUPTIONS: tuple[Corruption, ...] = get_args(Corruption)


def random_logits(like: Tensor, scale: float = 4.0, seed: int = 0) -> Tensor:
    """Gaussian logits ``N(0, scale^2)`` with the shape and dtype of ``like`` (any shape).

    Deterministic for a given ``seed`` (a private CPU generator; global RNG untouched).
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(tuple(like.shape), generator=g, dtype=torch.float32)
    return (scale * noise).to(dtype=like.dtype, device=like.device)


def invert_foreground(logits: Tensor) -> Tensor:
    """Swap background and foreground: ``(..., 2, H, W)`` -> same shape, ``softmax = 1 - p``.

    The class axis is ``-3`` (``(B, K, H, W)`` or stacked ``(J, B, K, H, W)``); ``K`` must be 2.
    """
    if logits.dim() < 3 or logits.shape[-3] != 2:
        raise ValueError(f"inverted foreground needs 2 classes on axis -3, got {logits.shape}")
    return logits.flip(-3)


def corrupt_logits(logits: Tensor, kind: Corruption, scale: float = 4.0, seed: int = 0) -> Tensor:
    """One teacher's logits ``(B, K, H, W)`` corrupted by ``kind`` (same shape and dtype)."""
    if kind == "random":
        return random_logits(logits, scale, seed)
    if kind == "inverted":
        return invert_foreground(logits)
    raise ValueError(f"unknown corruption {kind!r}; choose one of {CORRUPTIONS}")


def corrupt_teacher(targets: TeacherTargets, j: int, kind: Corruption, scale: float = 4.0,
                    seed: int = 0) -> TeacherTargets:
    """Copy of ``targets`` (``J`` teachers) whose teacher ``j`` sends corrupted logits.

    ``targets.logits (J, B, K, H, W)``; the result has the same shapes. Teachers other than
    ``j`` and every non-logit field (attention maps, region contrast) are shared unchanged.
    """
    if not 0 <= j < targets.num_teachers:
        raise IndexError(f"teacher {j} out of range for {targets.num_teachers} teachers")
    logits = targets.logits.clone()
    logits[j] = corrupt_logits(targets.logits[j], kind, scale, seed)
    return dataclasses.replace(targets, logits=logits)
