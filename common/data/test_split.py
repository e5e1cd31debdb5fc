"""A site's held-out test volumes, loaded the same way by both roles.

The coordinator (``coordinator distill --local``, which scores teachers and students on every
site's test split) and the site node (which scores a student on its private test split for the
``evaluate`` message) both call :func:`load_test_split`, so neither imports the other.

Which grid: a model is scored on test cases prepared with *its own* plan (the grid it was trained
on): a teacher with the plan in its ``teacher.json``, a student with the proxy set's plan (sent
in the ``evaluate`` request). The target label always stays the site's own (its teacher's plan),
and the scores themselves are taken on each case's original grid (:mod:`common.inference.evaluate`).
"""

from __future__ import annotations

from pathlib import Path

from common.data.layout import discover_dataset
from common.data.plan import Plan
from common.data.slices import Volume, load_volumes
from common.data.split import load_split
from common.data.teacher_card import TeacherCard


def site_plan(teacher_dir: Path) -> Plan | None:
    """The plan recorded in the teacher card of ``teacher_dir`` (None for teachers trained
    before plans existed, or when there is no card); a bad card is a one-line DataError."""
    card = TeacherCard.read(teacher_dir, missing_ok=True)
    return card.plan if card is not None else None


def load_test_split(data: Path, teacher_dir: Path, size: int,
                    plan: Plan | None = None) -> list[Volume]:
    """The held-out test volumes of the dataset at ``data``.

    Case ids are those of ``teacher_dir/split.json`` (written when the teacher was trained), so
    the test split is the one the teacher never saw. Preprocessing: ``plan`` when given (a
    student's), else the teacher's own plan, else the legacy default at ``size``; the target
    labels are the site's (teacher plan's) whenever it has one. Images are ``(Z, S, S)``.
    """
    split = load_split(teacher_dir / "split.json")
    own = site_plan(teacher_dir)
    use = plan or own
    if use is not None and own is not None:
        use = use.model_copy(update={"labels": own.labels, "label_name": own.label_name})
    return load_volumes(discover_dataset(data), split.test, size, plan=use)
