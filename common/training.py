"""Training plumbing shared by the site's teacher trainer and the coordinator's student trainer.

Device/AMP selection, seeded RNG, CSV metric logs, loss/Dice curve plots, atomic checkpoints
with resume, and early stopping. Nothing here knows about a particular loss or model.
"""

from __future__ import annotations

import contextlib
import csv
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io import atomic_torch_save


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when ``enabled``; a no-op context on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for data loaders."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class CsvLog:
    """Append-only CSV metrics log that survives resume (header written once)."""

    def __init__(self, path: Path, fields: list[str]) -> None:
        self.path = path
        self.fields = fields
        path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, epoch: int) -> None:
        """Drop rows with ``epoch`` > the given one (used when resuming from a checkpoint)."""
        rows = [r for r in self.read() if int(r["epoch"]) <= epoch]
        with self.path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        """Append one row (missing fields left blank)."""
        new = not self.path.exists()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def read(self) -> list[dict[str, str]]:
        """All rows so far."""
        if not self.path.exists():
            return []
        with self.path.open(newline="") as fh:
            return list(csv.DictReader(fh))


def plot_curves(rows: list[dict[str, str]], keys: list[str], out: Path, title: str) -> None:
    """Plot each numeric column in ``keys`` against ``epoch`` into one PNG (one panel per key)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    epochs = [int(r["epoch"]) for r in rows]
    for ax, key in zip(axes[0], keys, strict=True):
        vals = [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]
        ax.plot(epochs, vals, marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


@dataclass
class EarlyStopping:
    """Stop when the monitored (higher-is-better) value has not improved for ``patience`` epochs."""

    patience: int
    best: float = -np.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record ``value``; return True if it is a new best."""
        if value > self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once patience is exhausted."""
        return self.bad_epochs >= self.patience


@dataclass
class Checkpointer:
    """Atomic ``last.pt`` / ``best.pt`` in ``folder``; ``load_last`` for ``--resume``."""

    folder: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, name: str, state: dict[str, Any]) -> Path:
        """Atomically write ``state`` (plus ``extra``) to ``folder/name``."""
        path = self.folder / name
        atomic_torch_save(path, {**self.extra, **state})
        return path

    def load(self, name: str, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """Load ``folder/name`` or return None if absent."""
        path = self.folder / name
        if not path.exists():
            return None
        return dict(torch.load(path, map_location=map_location, weights_only=False))


def iterate_progress(items: Any, desc: str, enabled: bool = True) -> Iterator[Any]:
    """Wrap an iterable in a tqdm bar; off when stderr is not a terminal (logs stay readable)."""
    import sys

    from tqdm.auto import tqdm

    show = enabled and sys.stderr.isatty()
    yield from tqdm(items, desc=desc, leave=False, disable=not show, dynamic_ncols=True)
