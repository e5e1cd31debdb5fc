"""``results.json``: the experiment's result rows, read and written here only.

Both transports write it (:func:`coordinator.distill.experiment.run_experiment`); the export,
the benchmarks and the local-vs-federated comparison read it. A row is a :class:`ResultRow`
(a plain dict at run time): the one list of the keys a row can have, used by every function
that takes or returns rows. ``run``, ``mean_dice``, ``seed``, ``sites`` and ``cases`` are
checked (and coerced: ``mean_dice`` to float, ``seed`` to int) on the way in and out; the other
keys are typed for the type checker only and, like any key not listed, ride along unchanged,
so a row written by one version of a baseline is still read by the next. A file without
``version`` (written before the schema existed) holds the same rows and is read as version 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Required

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    TypeAdapter,
    ValidationError,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

RESULTS_VERSION = 1
FILE = "results.json"

#: per-site, per-case scores ``{site: {case key: {dice, voe, hd95}}}`` (keys ``case000``...)
CaseScores = dict[str, dict[str, dict[str, Any]]]


@with_config(ConfigDict(extra="allow"))  # sets __pydantic_config__: unlisted keys are kept
class ResultRow(TypedDict, total=False):
    """One row of the results table: a teacher (``teacher_<site>``), a student run (mean over
    seeds when ``repeats`` > 1) or a peer baseline (``local_only[_<site>]``, ``pooled``,
    ``fedavg``, ``fedprox``, ``fedbn``).

    The five checked keys come first, the others in alphabetical order: a validated row's keys
    come out in this order, then the unlisted ones, so the rows :func:`read_rows` returns from
    a (key-sorted) ``results.json`` keep the key order a pydantic model gave them."""

    run: Required[Annotated[str, Field(min_length=1)]]
    mean_dice: float | None  # mean ``dice_mean`` over sites; NaN, null on disk: None read back
    seed: int | None  # the student seed of a single-seed row
    sites: dict[str, dict[str, Any]]  # site -> summary (``dice_mean``, ... or ``error``)
    cases: CaseScores | None  # per-case scores of a single-seed row
    arch: SkipValidation[str]  # teacher rows: the teacher's architecture
    checkpoint_dir: SkipValidation[str]  # folder of the run's ``last.pt``
    cost: SkipValidation[dict[str, Any]]  # :func:`coordinator.baselines.costs.cost_summary`
    fedavg_refused: SkipValidation[dict[str, str]]  # FedAvg-family rows: site -> reason
    identity: SkipValidation[str]  # the run folder's fingerprint digest
    mean_dice_sd: SkipValidation[float]  # sample sd of ``seed_mean_dice`` (repeated rows)
    note: SkipValidation[str]  # FedBN rows: what the row's model is
    proxy: SkipValidation[dict[str, float]]  # summary on the labelled proxy (no site score)
    proxy_cases: SkipValidation[dict[str, dict[str, Any]]]  # per-case scores on the proxy
    seed_cases: SkipValidation[dict[str, CaseScores]]  # str(seed) -> ``cases`` (repeated)
    seed_mean_dice: SkipValidation[list[float]]  # per-seed ``mean_dice`` (repeated rows)
    seeds: SkipValidation[list[int]]  # the seeds of a repeated row
    student: SkipValidation[str]  # student rows: the student model's name
    teachers: SkipValidation[list[str]]  # the teaching sites ([]: no KD, peer baselines)
    train_seconds: SkipValidation[float]  # training time over all seeds
    wall_seconds: SkipValidation[float]  # wall time of the row in this run
    weighting: SkipValidation[str | None]  # weighting label, or what the peer row is


class ResultsFile(BaseModel):
    """The whole ``results.json``: a version and the rows in table order."""

    model_config = ConfigDict(extra="forbid")

    version: int = RESULTS_VERSION
    rows: list[ResultRow]


_ROW: TypeAdapter[ResultRow] = TypeAdapter(ResultRow)


class ResultsError(ValueError):
    """``results.json`` is unreadable or not a results file; the message names it."""


def write_rows(out: Path, rows: list[ResultRow]) -> Path:
    """Check ``rows`` against :class:`ResultRow` and write ``out/results.json`` atomically
    (the checked keys coerced, keys a row lacks not written)."""
    from common.io import atomic_write_json

    checked = ResultsFile(rows=[_ROW.validate_python(r) for r in rows])
    path = out / FILE
    atomic_write_json(path, {"rows": checked.rows, "version": RESULTS_VERSION})
    return path


def read_rows(out: Path) -> list[ResultRow]:
    """The rows of ``out/results.json`` as plain dicts (extras kept), checked on the way in."""
    return read_rows_file(out / FILE)


def read_rows_file(path: Path) -> list[ResultRow]:
    """The rows of a results file: a ``results.json``, or its gzipped copy (``.json.gz``, as
    the benchmark pages in ``bench/results/scenarios/`` keep it)."""
    import gzip

    try:
        data = path.read_bytes()
        raw = json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)
        if isinstance(raw, dict):
            raw.setdefault("version", RESULTS_VERSION)
        parsed = ResultsFile.model_validate(raw)
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResultsError(f"{path}: not a results file ({first})") from None
    if parsed.version > RESULTS_VERSION:
        raise ResultsError(f"{path}: results version {parsed.version} is newer than this "
                           f"fedmtkd reads ({RESULTS_VERSION})")
    return parsed.rows
