"""Target label selection from ``dataset.json`` labels.

The target is a set of foreground label values (their union is the organ):

* chosen by ``choice`` (config field ``label`` / CLI ``--label``): a declared name (``"spleen"``,
  case-insensitive), a value (``"1"``), a comma list (``"PZ,TZ"``, ``"1,2"``) or ``"all"``
  (every non-zero value);
* by default the single declared foreground label; a ``dataset.json`` declaring several
  foreground labels without a choice is refused (one line listing them);
* a mask file whose only non-zero value is 255 (0/255 masks, e.g. declared ``1`` but stored
  as ``255``) uses it as the target: binary masks keep working.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.errors import data_error


def _foreground(declared: dict[str, str]) -> dict[int, str]:
    """Declared non-background labels, value -> name."""
    out = {}
    for value, name in declared.items():
        try:
            v = int(float(value))
        except ValueError:
            continue
        if v != 0:
            out[v] = name
    return out


def _one(token: str, fg: dict[int, str], source: Path | str) -> int:
    """One token (name or value) -> label value."""
    by_name = {n.lower(): v for v, n in fg.items()}
    if token.lower() in by_name:
        return by_name[token.lower()]
    if token.lstrip("-").isdigit() and (not fg or int(token) in fg):
        return int(token)
    known = ", ".join(f"{n}={v}" for v, n in sorted(fg.items())) or "none declared"
    raise data_error(source, f"unknown label {token!r} (declared: {known})")


def resolve_target(declared: dict[str, str], choice: str | None,
                   source: Path | str) -> tuple[list[int] | None, str | None]:
    """``(values, name)`` of the target; ``values`` None means every non-zero value."""
    fg = _foreground(declared)
    if choice is not None and choice.strip().lower() == "all":
        return None, "all"
    if choice is not None:
        values = sorted({_one(t.strip(), fg, source) for t in choice.split(",") if t.strip()})
        return values, "+".join(fg.get(v, str(v)) for v in values)
    if len(fg) > 1:
        listing = ", ".join(f"{n}={v}" for v, n in sorted(fg.items()))
        raise data_error(source, f"declares {len(fg)} foreground labels ({listing}): choose the "
                                 "target with --label NAME|VALUE (or label = ... in the config)")
    if len(fg) == 1:
        (value, name), = fg.items()
        return [value], name
    return None, None


def select_target(label: np.ndarray, values: list[int] | None, path: Path | str) -> np.ndarray:
    """Binary uint8 {0, 1} mask of the target values in ``label`` (same shape).

    ``values`` None: every non-zero value, refused when the file holds several non-zero values
    (a multi-label file needs a choice). A file whose only non-zero value is 255 (not among
    ``values``) is a 0/255 binary mask and its non-zero voxels are the target.
    """
    arr = np.asarray(label)
    if arr.size and float(arr.min()) < 0:
        raise data_error(path, f"label values must be class indices >= 0, found {arr.min():g}")
    present = [int(v) for v in np.unique(arr) if v != 0]
    if values is None:
        if len(present) > 1:
            raise data_error(path, f"multi-label file (values {present}): choose the target "
                                   "with --label NAME|VALUE")
        return (arr != 0).astype(np.uint8)
    if present == [255] and 255 not in values:
        return (arr != 0).astype(np.uint8)
    return np.isin(arr, values).astype(np.uint8)


__all__ = ["resolve_target", "select_target"]
