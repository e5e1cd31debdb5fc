"""The teacher card (``teacher.json``): the one reader and writer of a teacher's metadata.

``site-node train`` writes it beside ``best.pt``; the site node (status, train reply, queries,
membership), the coordinator (local runs, baselines) and ``predict`` read it, always through
:class:`TeacherCard`. The JSON layout is unchanged from the hand-written cards (sorted keys,
strict JSON: NaN is written as ``null``), so every existing ``teacher.json`` still loads.

Older files: a card without ``"version"`` was written before cards were versioned; it reads as
``version = 0`` with every missing field at its default (no plan, ``input.size`` 64, modality
``MRI``). That is the only migration rule; :meth:`TeacherCard.write` always writes
:data:`CARD_VERSION`. A card from a newer release (``version > CARD_VERSION``) is refused.

Plans: :attr:`TeacherCard.plan` is ``None`` for teachers trained before plans existed. Callers
that load data at a size they are given use that (the legacy default at that size, see
:func:`common.data.slices.load_volumes`); callers that need the teacher's own grid use
:meth:`TeacherCard.plan_or_default` (the legacy default at the card's trained size).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from common.data.errors import DataError
from common.data.plan import Plan, default_plan
from common.io import atomic_write_json, json_safe

log = logging.getLogger(__name__)

CARD_NAME = "teacher.json"
CARD_VERSION = 1


class TeacherCardError(DataError):
    """A missing, unreadable or invalid ``teacher.json``; one line starting with its path."""


class TeacherInput(BaseModel):
    """The network input the teacher was trained for: ``(in_channels, size, size)`` images,
    ``num_classes`` output channels."""

    model_config = ConfigDict(extra="allow")

    in_channels: int = 1
    num_classes: int = 2
    size: int | None = 64  # None: written by a run without a plan or a configured size


class TeacherCard(BaseModel):
    """``teacher.json``: how the teacher in ``best.pt`` was built, selected and scored.

    ``val_dice``, ``best_epoch`` and ``test`` are ``None`` (JSON null) when the site had no
    held-out cases (``small_site = "train_on_all"``; then ``held_out_score`` is false and
    ``note`` says why). ``test`` is :func:`common.inference.evaluate.summarise` of the held-out
    3D scores (``dice_mean``, ``n``, ...). Unknown keys are kept (and written back).
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    version: int = CARD_VERSION
    architecture: str | None = None
    params: int | None = None
    input: TeacherInput = Field(default_factory=TeacherInput)
    plan: Plan | None = None
    checkpoint: str | None = None
    checkpoint_selection: str | None = None
    best_epoch: int | None = None
    val_dice: float | None = None
    held_out_score: bool | None = None
    note: str | None = None
    test: dict[str, Any] | None = None
    data_fingerprint: dict[str, Any] | None = None
    created: str | None = None
    _source: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _not_newer(self) -> TeacherCard:
        if self.version > CARD_VERSION:
            raise ValueError(f"card version {self.version} is newer than this release "
                             f"understands ({CARD_VERSION})")
        return self

    # ------------------------------------------------------------------------- file I/O
    @staticmethod
    def path_of(where: Path | str) -> Path:
        """``where/teacher.json`` for a teacher folder, ``where`` itself for a file path."""
        where = Path(where)
        if where.is_dir() or where.suffix != ".json":
            return where / CARD_NAME
        return where

    @staticmethod
    def exists(where: Path | str) -> bool:
        """Whether the teacher folder (or card path) ``where`` has a card file."""
        return TeacherCard.path_of(where).is_file()

    @overload
    @classmethod
    def read(cls, where: Path | str, missing_ok: Literal[False] = ...) -> TeacherCard: ...

    @overload
    @classmethod
    def read(cls, where: Path | str, missing_ok: bool) -> TeacherCard | None: ...

    @classmethod
    def read(cls, where: Path | str, missing_ok: bool = False) -> TeacherCard | None:
        """The card of the teacher folder (or card file) ``where``.

        A missing file is ``None`` with ``missing_ok``, else a :class:`TeacherCardError`; an
        unreadable or invalid one is always a one-line :class:`TeacherCardError` naming it.
        """
        path = cls.path_of(where)
        if not path.is_file():
            if missing_ok:
                return None
            raise TeacherCardError(f"{path}: not found")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TeacherCardError(f"{path}: unreadable teacher card ({reason})") from None
        if not isinstance(data, dict):
            raise TeacherCardError(f"{path}: unreadable teacher card (not a JSON object)")
        try:
            card = cls.model_validate(_migrate(data))
        except ValidationError as exc:
            raise TeacherCardError(_one_line(path, exc)) from None
        card._source = path
        return card

    def as_json(self) -> dict[str, Any]:
        """The JSON object :meth:`write` writes: the top-level keys that were set (or read),
        nested values (``plan``, ``input``) in full, NaN as ``None``, :data:`CARD_VERSION`."""
        keys = self.model_fields_set | set(self.model_extra or {})
        data = self.model_dump(mode="python", include=keys)
        return dict(json_safe({**data, "version": CARD_VERSION}))

    def write(self, folder: Path | str) -> Path:
        """Atomically write ``folder/teacher.json`` (:meth:`as_json`; strict JSON, sorted keys)
        and return its path."""
        path = self.path_of(folder)
        try:
            data = self.as_json()
        except ValueError as exc:  # an infinite score
            raise ValueError(f"{path}: {exc}") from exc
        atomic_write_json(path, data)
        return path

    # ------------------------------------------------------------------------- derived
    @property
    def modality(self) -> str:
        """The training data's modality from ``data_fingerprint`` (``MRI`` when absent)."""
        return str((self.data_fingerprint or {}).get("modality", "MRI"))

    def plan_or_default(self) -> Plan:
        """The recorded plan; a teacher trained before plans existed gets the legacy default
        (fit into the trained ``input.size``, the card's modality) with a warning."""
        if self.plan is not None:
            return self.plan
        size = self.input.size if self.input.size is not None else 64
        log.warning("%s has no preprocessing plan; using the legacy default (%s, %d px)",
                    self._source or CARD_NAME, self.modality, size)
        return default_plan(self.modality, size)


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """The one rule for older files: no ``version`` means a pre-versioning card (0), every
    missing field at its default."""
    return data if "version" in data else {**data, "version": 0}


def _one_line(path: Path, exc: ValidationError) -> str:
    """``"<path>: invalid ... (<field>: <message>)"`` for the first validation error."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    what = "preprocessing plan" if loc[:1] == ["plan"] else "teacher card"
    field = ".".join(loc) or "card"
    return f"{path}: invalid {what} ({field}: {' '.join(str(err['msg']).split())})"
