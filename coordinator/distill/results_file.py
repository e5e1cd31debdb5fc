"""``results.json``: the experiment's result rows, read and written here only.

Both transports write it (:func:`coordinator.distill.experiment.run_experiment`); the export,
the benchmarks and the local-vs-federated comparison read it. Each row is a :class:`ResultRow`:
the fields every row has are typed and checked, the rest (per-row extras such as ``proxy``,
``student``, ``note``, ``cost``) ride along unchanged, so a row written by one version of a
baseline is still read by the next. A file without ``version`` (written before the schema
existed) holds the same rows and is read as version 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RESULTS_VERSION = 1
FILE = "results.json"


class ResultRow(BaseModel):
    """One row of the results table: a teacher, a student run (mean over seeds when
    ``repeats`` > 1) or a peer baseline. ``sites``: per-site summary scores (``dice_mean``,
    ...); ``cases``: per-site, per-case scores under pseudonymous keys (``case000``, ...)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    run: str = Field(min_length=1)
    mean_dice: float | None = None
    seed: int | None = None
    sites: dict[str, dict[str, Any]] = Field(default_factory=dict)
    cases: dict[str, dict[str, dict[str, Any]]] | None = None


class ResultsFile(BaseModel):
    """The whole ``results.json``: a version and the rows in table order."""

    model_config = ConfigDict(extra="forbid")

    version: int = RESULTS_VERSION
    rows: list[ResultRow]


class ResultsError(ValueError):
    """``results.json`` is unreadable or not a results file; the message names it."""


def write_rows(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Check ``rows`` against :class:`ResultRow` and write ``out/results.json`` atomically."""
    from common.io import atomic_write_json

    checked = ResultsFile(rows=[ResultRow.model_validate(r) for r in rows])
    path = out / FILE
    atomic_write_json(path, checked.model_dump(exclude_unset=True) | {"version": RESULTS_VERSION})
    return path


def read_rows(out: Path) -> list[dict[str, Any]]:
    """The rows of ``out/results.json`` as plain dicts (extras kept), checked on the way in."""
    path = out / FILE
    try:
        raw = json.loads(path.read_text())
        if isinstance(raw, dict):
            raw.setdefault("version", RESULTS_VERSION)
        parsed = ResultsFile.model_validate(raw)
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResultsError(f"{path}: not a results file ({first})") from None
    if parsed.version > RESULTS_VERSION:
        raise ResultsError(f"{path}: results version {parsed.version} is newer than this "
                           f"fedmtkd reads ({RESULTS_VERSION})")
    return [r.model_dump(exclude_unset=True) for r in parsed.rows]
