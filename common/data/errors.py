"""Error type for bad input data (unreadable files, inconsistent volumes, unknown layouts)."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. The one-line message always starts with the offending file path."""


def data_error(path: Path | str, reason: str) -> DataError:
    """Build a :class:`DataError` whose message is ``"<path>: <reason>"`` on one line."""
    return DataError(f"{path}: {' '.join(reason.split())}")
