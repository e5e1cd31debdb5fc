"""Concatenate / stack :class:`TeacherTargets` along the batch or teacher axis."""

from __future__ import annotations

import dataclasses

import torch

from common.kd.targets import TeacherTargets


def _fields() -> list[str]:
    return [f.name for f in dataclasses.fields(TeacherTargets)]


def concat_batches(parts: list[TeacherTargets]) -> TeacherTargets:
    """Concatenate targets of consecutive proxy batches along the batch axis (dim 1)."""
    return TeacherTargets(**{k: torch.cat([getattr(p, k) for p in parts], 1) for k in _fields()})


def stack_teachers(parts: list[TeacherTargets]) -> TeacherTargets:
    """Stack targets of several teachers along the teacher axis (dim 0)."""
    return TeacherTargets(**{k: torch.cat([getattr(p, k) for p in parts], 0) for k in _fields()})


def map_tensors(t: TeacherTargets, fn: object) -> TeacherTargets:
    """Apply ``fn`` (Tensor -> Tensor) to every tensor field."""
    assert callable(fn)
    return TeacherTargets(**{k: fn(getattr(t, k)) for k in _fields()})


def select_teachers(t: TeacherTargets, idx: list[int]) -> TeacherTargets:
    """Keep only teachers ``idx`` (teacher axis 0)."""
    return map_tensors(t, lambda v: v[idx])
