"""Deterministic case-level train / val / test split, saved as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.data.errors import data_error
from common.io import atomic_write_json

MIN_SPLIT_CASES = 3  # one case each for train, validation and test


@dataclass
class Split:
    """Case ids per subset (each list sorted; no id in two subsets)."""

    train: list[str]
    val: list[str]
    test: list[str]


def split_cases(
    case_ids: list[str], val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0
) -> Split:
    """Split case ids into train/val/test, independent of input order.

    Ids are sorted, then shuffled with ``seed``. Every subset gets at least one case, so at
    least :data:`MIN_SPLIT_CASES` (3) are needed; fewer raise ValueError naming the minimum
    (a site that small must opt in to :func:`train_only_split` explicitly).
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ValueError("split_cases: duplicate case ids")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1):
        raise ValueError("split_cases: fractions must be in [0, 1)")
    n = len(ids)
    if n < MIN_SPLIT_CASES:
        raise ValueError(f"split_cases: {n} case(s); a train/val/test split needs at least "
                         f"{MIN_SPLIT_CASES} (one per subset)")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    n_test = min(max(1, round(n * test_fraction)), n - 2)
    n_val = min(max(1, round(n * val_fraction)), n - 1 - n_test)
    test, val = order[:n_test], order[n_test : n_test + n_val]
    return Split(train=sorted(order[n_test + n_val :]), val=sorted(val), test=sorted(test))


def train_only_split(case_ids: list[str]) -> Split:
    """Every case in train, none held out (the opt-in for sites below MIN_SPLIT_CASES)."""
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids) or not ids:
        raise ValueError("train_only_split: duplicate or no case ids")
    return Split(train=ids, val=[], test=[])


def save_split(path: Path | str, split: Split) -> None:
    """Atomically write ``split`` as JSON ``{"train": [...], "val": [...], "test": [...]}``."""
    atomic_write_json(Path(path), asdict(split))


def load_split(path: Path | str) -> Split:
    """Read a split written by :func:`save_split`; errors name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        split = Split(**{k: [str(c) for c in data[k]] for k in ("train", "val", "test")})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise data_error(path, f"invalid split file: {exc}") from exc
    if _overlap(split):
        raise data_error(path, "invalid split file: a case appears in two subsets")
    return split


def _overlap(split: Split) -> bool:
    """True when some case id is in more than one subset."""
    all_ids = split.train + split.val + split.test
    return len(all_ids) != len(set(all_ids))
