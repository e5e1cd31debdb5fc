"""A teacher for system benchmarks that stands in for a site's own accelerator.

On one shared machine, twelve virtual sites cannot each have their own compute: their teacher
forwards compete for the same cores, so "per-site compute held equal" cannot be
measured with real teachers. ``emulated_accelerator`` is a :class:`TinyUNet` whose
``seg_forward`` also holds the site's emulated accelerator for ``seconds_per_slice`` x B
seconds, sleeping under an exclusive ``flock`` on ``lock_path`` (one lock file per site), so
that concurrent messages of one site are served one at a time, as on one GPU, while different
sites run in parallel without using this machine's CPU. Used by ``bench/bench_query.py
--emulate-s-per-slice``; never by a real site (the site trains and serves what its own config
names).

Bench code: importing this module registers ``emulated_accelerator`` in the model registry;
the product never imports it. The benchmark's site processes are started by
``coordinator simulate``, so :func:`register_in_children` makes every Python process started
afterwards import this module first (a ``sitecustomize`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from torch import Tensor

from common.models.base import SegOutput
from common.models.teachers import TinyUNet
from common.models.zoo import register_model


@register_model("emulated_accelerator")
class EmulatedAccelerator(TinyUNet):
    """:class:`TinyUNet` plus ``seconds_per_slice`` x B s on an emulated per-site accelerator.

    ``seg_forward``: ``(B, C_in, H, W)`` -> the TinyUNet's :class:`SegOutput`, returned after
    the hold. ``lock_path``: the site's lock file (created if missing); ``None`` = no lock.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16,
                 seconds_per_slice: float = 0.0, lock_path: str | None = None) -> None:
        super().__init__(in_channels, num_classes, width)
        if seconds_per_slice < 0:
            raise ValueError(f"seconds_per_slice must be >= 0, got {seconds_per_slice}")
        self.seconds_per_slice, self.lock_path = seconds_per_slice, lock_path

    def seg_forward(self, x: Tensor) -> SegOutput:
        """``x``: ``(B, C_in, H, W)`` -> :class:`SegOutput` (as :class:`TinyUNet`)."""
        out = super().seg_forward(x)
        self.hold(x.shape[0])
        return out

    def hold(self, n_slices: int) -> float:
        """Occupy the site's accelerator for ``n_slices`` slices; return the seconds held."""
        seconds = n_slices * self.seconds_per_slice
        if seconds <= 0:
            return 0.0
        if self.lock_path is None:
            time.sleep(seconds)
            return seconds
        with Path(self.lock_path).open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            time.sleep(seconds)
        return seconds


def register_in_children(folder: Path) -> Path:
    """Make Python processes started from now on (the simulated sites) register
    ``emulated_accelerator`` too: write ``folder/sitecustomize.py`` importing this module and
    put ``folder`` and the repository root first on ``PYTHONPATH``; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    hook = folder / "sitecustomize.py"
    hook.write_text("import bench.emulated_models  # noqa: F401  (registers the model)\n")
    root = str(Path(__file__).resolve().parent.parent)
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(folder), root, *rest])
    return hook
