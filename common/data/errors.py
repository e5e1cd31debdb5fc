"""Error type for bad input data (unreadable files, inconsistent volumes, unknown layouts)."""

from __future__ import annotations

import os
from pathlib import Path


class DataError(ValueError):
    """Bad input data. The one-line message always starts with the offending file path."""


def data_error(path: Path | str, reason: str) -> DataError:
    """Build a :class:`DataError` whose message is ``"<path>: <reason>"`` on one line."""
    return DataError(f"{path}: {' '.join(reason.split())}")


def refuse_inside(out: Path | str, data: Path | str) -> None:
    """The site's data folder is never written to: a DataError when ``out`` (a file or folder
    to write) resolves inside ``data`` (symlinks followed)."""
    if Path(out).resolve().is_relative_to(Path(data).resolve()):
        raise data_error(out, f"is inside the data folder {data}, which is never written to; "
                              "choose an output outside it")


def utf8_name(path: Path) -> Path:
    """``path`` if its file name is valid UTF-8, else a DataError naming the folder and the raw
    name (Python would otherwise carry surrogate escapes into ids, logs and plots)."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(path.name)
        raise data_error(path.parent, f"file name {raw!r} is not valid UTF-8; rename it") from None
    return path
