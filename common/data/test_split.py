"""A site's held-out test volumes, loaded the same way by both roles.

The coordinator (``coordinator distill --local``, which scores teachers and students on every
site's test split) and the site node (which scores a student on its private test split for the
``evaluate`` message) both call :func:`load_test_split`, so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

from common.data.layout import discover_dataset
from common.data.slices import Volume, load_volumes
from common.data.split import load_split


def load_test_split(data: Path, teacher_dir: Path, size: int) -> list[Volume]:
    """The test volumes of the dataset at ``data`` resized to ``size``.

    Case ids are those of ``teacher_dir/split.json`` (written when the teacher was trained), so
    the test split is the one the teacher never saw. Each volume's image is ``(Z, size, size)``.
    """
    split = load_split(teacher_dir / "split.json")
    return load_volumes(discover_dataset(data), split.test, size)
