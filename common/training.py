"""Training plumbing shared by the site's teacher trainer and the coordinator's student trainer.

Device/AMP selection, seeded RNG, CSV metric logs, loss/Dice curve plots, atomic checkpoints
with resume, and early stopping. Nothing here knows about a particular loss or model.

The loop skeleton both trainers use is :class:`Trainer` plus :func:`fit_epochs`: Adam +
CyclicLR (:func:`make_optimiser`), AMP (bf16 autocast on CUDA; a ``GradScaler`` that is only
enabled for float16), and an atomic ``last.pt`` after every epoch holding the model,
optimiser, scheduler, scaler, the caller's extra state (early stopping) and *every* random
stream (:func:`capture_rng`): python ``random``, numpy's global generator, torch CPU and CUDA,
each DataLoader's generator and the dataset's augmentation streams. Resuming from ``last.pt``
after epoch k therefore continues bit for bit as if the run had never stopped (same data
order, same augmentations, same dropout masks). A trainer supplies only its step/loss logic
and its metric row.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch

from common.io import atomic_torch_save

_log = logging.getLogger(__name__)


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device, which must exist
    here (``cuda`` without a GPU, ``cuda:99`` or ``gpu`` is a one-line ``ConfigError``)."""
    from common.config import ConfigError

    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(preference)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {str(preference)[:40]}: not a device (use auto, cpu, "
                          "cuda or cuda:N)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {preference}: no CUDA device on this machine "
                              "(use cpu or auto)")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"--device {preference}: this machine has {count} CUDA "
                              f"device(s): cuda:0..cuda:{count - 1}")
    elif dev.type not in ("cpu", "mps", "xpu", "meta"):
        raise ConfigError(f"--device {preference}: unsupported device type {dev.type!r} "
                          "(use auto, cpu, cuda or cuda:N)")
    return dev


def autocast(
    device: torch.device, enabled: bool = True, dtype: torch.dtype = torch.bfloat16
) -> contextlib.AbstractContextManager[Any]:
    """``dtype`` (default bf16) autocast on CUDA when ``enabled``; a no-op context on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
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

    def state_dict(self) -> dict[str, Any]:
        """Best value, its epoch and the count of epochs without improvement."""
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])


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


PROGRESS_LOG_S = 30.0
"""Seconds between step-progress log lines when stderr is not a terminal."""


def iterate_progress(items: Any, desc: str, enabled: bool = True,
                     clock: Callable[[], float] | None = None) -> Iterator[Any]:
    """Wrap an iterable in a tqdm bar on a terminal; elsewhere (a log file, a container) log
    ``desc: step i/N (p %), elapsed, ETA`` every :data:`PROGRESS_LOG_S` seconds instead."""
    import sys

    from tqdm.auto import tqdm

    if enabled and sys.stderr.isatty():
        yield from tqdm(items, desc=desc, leave=False, dynamic_ncols=True)
    elif enabled:
        yield from _logged_progress(items, desc, clock or _monotonic)
    else:
        yield from items


def _monotonic() -> float:
    import time

    return time.monotonic()


def _logged_progress(items: Any, desc: str, clock: Callable[[], float]) -> Iterator[Any]:
    """Yield ``items``, logging step progress with an ETA every :data:`PROGRESS_LOG_S` s."""
    total = len(items) if hasattr(items, "__len__") else None
    start = last = clock()
    for i, item in enumerate(items, 1):
        yield item
        now = clock()
        if now - last < PROGRESS_LOG_S:
            continue
        last, elapsed = now, now - start
        if total:
            eta = elapsed / i * (total - i)
            _log.info("%s: step %d/%d (%.0f %%), %s elapsed, ETA %s", desc, i, total,
                      100 * i / total, _hms(elapsed), _hms(eta))
        else:
            _log.info("%s: step %d, %s elapsed", desc, i, _hms(elapsed))


def _hms(seconds: float) -> str:
    """``1h02m03s`` / ``2m03s`` / ``3s``."""
    s = int(round(seconds))
    h, m = s // 3600, s // 60 % 60
    return f"{h}h{m:02d}m{s % 60:02d}s" if h else (f"{m}m{s % 60:02d}s" if m else f"{s}s")


class Stateful(Protocol):
    """Anything with ``state_dict``/``load_state_dict`` (early stopping, counters...)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class OptimSpec:
    """The one optimiser of every trainer: Adam + CyclicLR (paper 4.3), lr cycling between
    ``base_lr`` and ``max_lr`` over ``2 * step_size_up`` steps. A resumable loop drives it
    with torch's scheduler (:func:`make_optimiser`); a FedAvg/FedProx round, which starts
    fresh at a given global step, reads the rate from :meth:`lr_at`."""

    max_lr: float
    base_lr: float
    step_size_up: int
    weight_decay: float = 0.0
    mode: str = "triangular"

    def lr_at(self, step: int) -> float:
        """torch's triangular CyclicLR at ``step`` (0-based): ``base_lr`` -> ``max_lr`` over
        ``step_size_up`` steps, then back (``mode = "triangular"`` only)."""
        half = self.step_size_up
        cycle = math.floor(1 + step / (2 * half))
        x = abs(step / half - 2 * cycle + 1)
        return self.base_lr + (self.max_lr - self.base_lr) * max(0.0, 1.0 - x)


def adam(params: Sequence[torch.nn.Parameter], spec: OptimSpec) -> torch.optim.Adam:
    """Adam with default betas, ``lr = spec.max_lr`` and ``spec.weight_decay``."""
    return torch.optim.Adam(params, lr=spec.max_lr, weight_decay=spec.weight_decay)


def make_optimiser(
    model: torch.nn.Module, spec: OptimSpec, extra: Sequence[torch.nn.Parameter] = ()
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.CyclicLR]:
    """:func:`adam` and a per-step CyclicLR without momentum cycling; ``extra`` parameters
    (e.g. a learned teacher weighting) join the model's, after them."""
    opt = adam([*model.parameters(), *extra], spec)
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=spec.base_lr, max_lr=spec.max_lr, step_size_up=spec.step_size_up,
        mode=spec.mode, cycle_momentum=False,  # type: ignore[arg-type]
    )
    return opt, sched


def _loader_rng(loaders: Sequence[Any]) -> tuple[list[torch.Generator], list[Any]]:
    """The loaders' generators and the augmenters (objects with ``rng_state``) of their data."""
    gens = [lo.generator for lo in loaders if getattr(lo, "generator", None) is not None]
    augs = [getattr(lo.dataset, "augment", None) for lo in loaders]
    return gens, [a for a in augs if hasattr(a, "rng_state")]


def capture_rng(loaders: Sequence[Any] = ()) -> dict[str, Any]:
    """Every random stream a training loop draws from (see the module doc)."""
    gens, augs = _loader_rng(loaders)
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "loaders": [g.get_state() for g in gens],
        "augment": [a.rng_state() for a in augs],
    }


def restore_rng(state: dict[str, Any], loaders: Sequence[Any] = ()) -> None:
    """Put back what :func:`capture_rng` returned (same loaders, in the same order)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gens, augs = _loader_rng(loaders)
    for g, s in zip(gens, state["loaders"], strict=True):
        g.set_state(s)
    for a, s in zip(augs, state["augment"], strict=True):
        a.set_rng_state(s)


M = TypeVar("M", bound=torch.nn.Module)


class Trainer(Generic[M]):
    """Optimiser, scheduler, AMP and resumable checkpoints around one model.

    ``arch`` is ``(model name, build kwargs)`` so the checkpoints load with
    :func:`common.models.checkpoint.load_model`. ``loaders`` are the DataLoaders whose
    generator and augmentation streams must survive a resume; ``extra`` holds further state
    saved in ``last.pt`` (e.g. ``{"early": EarlyStopping}``); ``meta`` is written as is into
    both checkpoints (e.g. the preprocessing ``plan``). ``params`` are further parameters the
    optimiser trains with the model's (put their module in ``extra`` so a resume restores them).
    """

    def __init__(
        self, model: M, arch: tuple[str, dict[str, Any]], spec: OptimSpec,
        device: torch.device, folder: Path, amp: bool = True,
        loaders: Sequence[Any] = (), extra: dict[str, Stateful] | None = None,
        meta: dict[str, Any] | None = None, params: Sequence[torch.nn.Parameter] = (),
    ) -> None:
        self.model, self.arch, self.device, self.amp = model, arch, device, amp
        self.opt, self.sched = make_optimiser(model, spec, params)
        self.amp_dtype = torch.bfloat16  # bf16 needs no loss scaling: the scaler stays off
        scale = amp and device.type == "cuda" and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=scale)
        self.ckpt = Checkpointer(folder, dict(meta or {}))
        self.loaders, self.extra = loaders, extra or {}

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward-pass autocast context (no-op on CPU or with ``amp`` off)."""
        return autocast(self.device, self.amp, self.amp_dtype)

    def step(self, loss: torch.Tensor) -> None:
        """Backward ``loss`` and take one optimiser and one scheduler step."""
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()

    @property
    def lr(self) -> float:
        """The learning rate the next step will use."""
        return float(self.sched.get_last_lr()[0])

    def weights(self) -> dict[str, Any]:
        """``model_name``, ``model_kwargs``, ``model`` (state dict): a loadable checkpoint."""
        from common.models.checkpoint import model_state

        return model_state(self.model, *self.arch)

    def save_best(self, epoch: int) -> None:
        """Write the current weights to ``best.pt``."""
        self.ckpt.save("best.pt", {**self.weights(), "epoch": epoch})

    def load_best(self) -> bool:
        """Load ``best.pt`` into the model if it exists; True when it did."""
        best = self.ckpt.load("best.pt", self.device)
        if best is not None:
            self.model.load_state_dict(best["model"])
        return best is not None

    def save_last(self, epoch: int) -> None:
        """Atomically write ``last.pt``: everything :meth:`resume` needs to continue exactly."""
        self.ckpt.save("last.pt", {
            **self.weights(), "epoch": epoch, "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
            "extra": {k: v.state_dict() for k, v in self.extra.items()},
            "rng": capture_rng(self.loaders),
        })

    def resume(self) -> int:
        """Restore ``last.pt`` if present; the epoch to start from (0 without one)."""
        state = self.ckpt.load("last.pt", "cpu")
        if state is None:
            return 0
        if not isinstance(state.get("rng"), dict) or "scaler" not in state:
            from common.models.checkpoint import CheckpointError

            raise CheckpointError(f"{self.ckpt.folder / 'last.pt'}: written by an older "
                                  "version without full resume state; delete it to restart")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for key, obj in self.extra.items():
            obj.load_state_dict(state["extra"][key])
        restore_rng(state["rng"], self.loaders)
        _log.info("resuming %s after epoch %d", self.ckpt.folder, state["epoch"])
        return int(state["epoch"]) + 1


EpochFn = Callable[[int], tuple[dict[str, Any], bool]]


def fit_epochs(trainer: Trainer[Any], epochs: int, one_epoch: EpochFn, log: CsvLog,
               resume: bool = True) -> int:
    """The epoch loop: resume (or restart), then per epoch run ``one_epoch(epoch)``, append its
    metric row to ``log`` and save ``last.pt``; stop early when it returns ``stop=True``.

    ``one_epoch`` returns ``(row without "epoch", stop)``. Rows after the resumed epoch are
    dropped from ``log`` first, so a crash between the row and ``last.pt`` never duplicates
    one. Returns the number of epochs run in this call.
    """
    start = trainer.resume() if resume else 0
    if log.path.exists():
        log.truncate_after(start - 1)
    for epoch in range(start, epochs):
        row, stop = one_epoch(epoch)
        log.append({"epoch": epoch, **row})
        trainer.save_last(epoch)
        if stop:
            return epoch + 1 - start
    return max(epochs - start, 0)
