"""Atomic file writes: nothing already written is lost if a run dies mid-save.

Every JSON file the project writes goes through :func:`strict_json_dumps`, so it is strict
JSON (RFC 8259: no ``NaN``/``Infinity`` tokens) that any parser accepts. Convention: a float
``NaN`` means *undefined / missing* (HD95 when exactly one of prediction and truth is empty, a
mean over zero cases, no held-out score) and is written as ``null``. ``+-Infinity`` has no such
meaning and is refused with a ``ValueError`` naming the key path (and the file, when writing one).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Write via ``writer`` to a temp file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    atomic_write(path, write)


def json_safe(obj: Any, where: str = "$") -> Any:
    """Copy of ``obj`` with float NaN (numpy floats too) -> None; raise on +-inf.

    Dicts, lists and tuples are walked (tuples become lists); other values are returned as is.
    ``where`` is the key path used in the error message (``$.test.hd95_mean``).
    """
    if isinstance(obj, float):  # numpy.float64 is a float subclass
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            raise ValueError(f"{where}: {obj} is not valid JSON (Infinity is never written)")
        return float(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalar
        return json_safe(obj.item(), where)
    return obj


def strict_json_dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps(json_safe(obj), allow_nan=False, **kwargs)``: NaN -> null, inf refused."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented, sorted, strict JSON (NaN -> null, see module doc).

    Raises ValueError naming ``path`` and the key when ``obj`` holds an infinite float.
    """
    try:
        text = strict_json_dumps(obj, indent=2, sort_keys=True)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    atomic_write_bytes(path, (text + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` through :func:`atomic_write` (torch imported lazily)."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))
