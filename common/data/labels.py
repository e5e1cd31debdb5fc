"""Target label selection: which label values make up the organ, and refusals when unclear.

The target is a set of foreground label values; the organ is their union. Rules (every layout):

* ``choice`` (config field ``label`` / CLI ``--label``): a declared name (``"spleen"``,
  case-insensitive), a value (``"1"``), a comma list of names or values (``"PZ,TZ"``,
  ``"1,2"``), or ``"all"``: every non-zero value (with a ``dataset.json``: every declared
  foreground value).
* No choice: the single declared foreground label; a ``dataset.json`` declaring several
  foreground labels without a choice is refused (one line listing them).
* No ``dataset.json`` (a ``CaseNN`` folder): nothing is declared, so names come from the values
  found (``"label 2"``). Without a choice each label file must hold ONE non-zero value (a
  binary mask); a file with several (zonal PZ=1 / TZ=2, multi-organ) is refused, naming the
  values, until ``--label`` picks some or ``all``.
* A value present in a label file but not declared in ``dataset.json`` is refused, never
  silently taken as background (``declared`` in :func:`select_target`).
* A file whose only non-zero value is 255 (0/255 masks, declared ``1`` but stored as ``255``)
  uses it as the target: binary masks keep working.

Encoding (:class:`~common.data.plan.Plan` ``labels`` / ``label_name``): a list of values is their
union; ``None`` with the name :data:`ALL` is every non-zero value; ``None`` with any other name
is the one non-zero value of a binary file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.errors import data_error

ALL = "all"


def foreground(declared: dict[str, str]) -> dict[int, str]:
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


def value_name(value: int) -> str:
    """Name of an undeclared label value (a folder without ``dataset.json``)."""
    return f"label {value}"


def _one(token: str, fg: dict[int, str], source: Path | str) -> int:
    """One token (name or value) -> label value."""
    by_name = {n.lower(): v for v, n in fg.items()}
    if token.lower() in by_name:
        return by_name[token.lower()]
    if token.isdigit() and int(token) > 0 and (not fg or int(token) in fg):
        return int(token)
    known = ", ".join(f"{n}={v}" for v, n in sorted(fg.items())) or "none declared"
    raise data_error(source, f"unknown label {token!r} (declared: {known}); use a "
                             "declared name or value, a comma list of them, or 'all'")


def resolve_target(declared: dict[str, str], choice: str | None,
                   source: Path | str) -> tuple[list[int] | None, str | None]:
    """``(values, name)`` of the target (see the module doc for the encoding)."""
    fg = foreground(declared)
    if choice is not None and choice.strip().lower() == ALL:
        return (sorted(fg) or None), ALL
    if choice is not None:
        values = sorted({_one(t.strip(), fg, source) for t in choice.split(",") if t.strip()})
        if not values:
            raise data_error(source, f"empty label choice {choice!r}")
        return values, "+".join(fg.get(v, value_name(v)) for v in values)
    if len(fg) > 1:
        listing = ", ".join(f"{n}={v}" for v, n in sorted(fg.items()))
        raise data_error(source, f"declares {len(fg)} foreground labels ({listing}): choose the "
                                 "target with --label NAME|VALUE[,...] or --label all (or "
                                 "label = ... in the config)")
    if len(fg) == 1:
        (value, name), = fg.items()
        return [value], name
    return None, None


def is_union(values: list[int] | None, name: str | None) -> bool:
    """Whether the target ``(values, name)`` (:func:`resolve_target`, or a plan's ``labels`` /
    ``label_name``) is every non-zero value: ``all`` on data that declares no label."""
    return values is None and name == ALL


def declared_values(declared: dict[str, str]) -> list[int] | None:
    """The declared foreground values, sorted (``declared`` of :func:`select_target`); None
    when nothing is declared: then no value is refused."""
    return sorted(foreground(declared)) or None


def select_target(label: np.ndarray, values: list[int] | None, path: Path | str,
                  union: bool = False, declared: list[int] | None = None) -> np.ndarray:
    """Binary uint8 {0, 1} mask of the target in ``label`` (same shape).

    ``values``: the target values (their union). ``None``: every non-zero value when ``union``
    (``--label all``), else the one non-zero value of a binary file (a file holding several is
    refused). ``declared``: the foreground values ``dataset.json`` declares; a value outside
    them is refused (None: nothing declared, no check). A file whose only non-zero value is 255
    is a 0/255 binary mask and its non-zero voxels are the target.
    """
    arr = np.asarray(label)
    if arr.size and float(arr.min()) < 0:
        raise data_error(path, f"label values must be class indices >= 0, found {arr.min():g}")
    present = [int(v) for v in np.unique(arr) if v != 0]
    if present == [255] and 255 not in (values or []) and 255 not in (declared or []):
        return (arr != 0).astype(np.uint8)
    if declared:
        extra = [v for v in present if v not in declared]
        if extra:
            raise data_error(path, f"label values {extra} are not declared in dataset.json "
                                   f"(declared: {sorted(declared)}); declare them or fix the "
                                   "file (an undeclared value is never taken as background)")
    if values is None:
        if len(present) > 1 and not union:
            raise data_error(path, f"multi-label file (values {present}): choose the target "
                                   "with --label VALUE[,VALUE...] or --label all")
        return (arr != 0).astype(np.uint8)
    return np.isin(arr, values).astype(np.uint8)


__all__ = ["ALL", "foreground", "resolve_target", "select_target", "value_name"]
