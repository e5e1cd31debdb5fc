"""Helpers shared by both ends' exchange logs: what a Flower ``RecordDict`` carries, and keys.

``flwr`` is not imported here: records are read through their mapping interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.audit.keys import generate_keypair, load_private_key


def record_contents(rd: Any, skip: tuple[str, ...] = ()) -> tuple[dict[str, np.ndarray],
                                                                 dict[str, Any]]:
    """All arrays (``record.name`` on a clash) and all scalars of ``rd`` (records in ``skip``
    ignored). Bytes scalars are replaced by ``"<N B>"``."""
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    for rkey, rec in rd.items():
        if rkey in skip:
            continue
        if type(rec).__name__ == "ArrayRecord":
            for name, arr in rec.items():
                arrays[name if name not in arrays else f"{rkey}.{name}"] = arr.numpy()
        else:
            for name, value in dict(rec).items():
                scalars[name] = value if not isinstance(value, bytes) else f"<{len(value)} B>"
    return arrays, scalars


def loggable(scalars: dict[str, Any]) -> dict[str, Any]:
    """Scalars an audit entry can hold (lists, e.g. slice hashes, become their length)."""
    return {k: (v if isinstance(v, str | int | float | bool) or v is None
                else f"<{type(v).__name__} of {len(v)}>") for k, v in scalars.items()}


def load_or_create_key(path: Path) -> Any:
    """The Ed25519 key at ``path``; generated (with ``<stem>.pub`` beside it) when absent."""
    if not path.exists():
        generate_keypair(path.parent, path.stem)
    return load_private_key(path)
