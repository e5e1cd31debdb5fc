"""On-disk cache of teacher outputs, keyed by site and proxy hash, so reruns never re-query."""

from __future__ import annotations

from pathlib import Path

import torch

from common.io import atomic_torch_save
from common.kd.targets import TeacherTargets


class TeacherCache:
    """``root/<site>-<proxy digest[:16]>.pt`` holding one site's TeacherTargets (fp16 maps)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, site: str, digest: str) -> Path:
        """Cache file of ``site`` for the proxy set with ``digest``."""
        return self.root / f"{site}-{digest[:16]}.pt"

    def get(self, site: str, digest: str) -> TeacherTargets | None:
        """Cached targets or None."""
        path = self.path(site, digest)
        if not path.exists():
            return None
        data = torch.load(path, map_location="cpu", weights_only=True)
        return TeacherTargets(**data).map(lambda v: v.float())

    def put(self, site: str, digest: str, targets: TeacherTargets) -> Path:
        """Store ``targets`` (logits and attention maps as fp16) atomically."""
        data = targets.map(lambda v: v.half() if v.dim() > 2 else v.float()).as_dict()
        path = self.path(site, digest)
        atomic_torch_save(path, data)
        return path
