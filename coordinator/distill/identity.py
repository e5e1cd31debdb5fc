"""Result identity of a student run: a resume never reuses a result trained from something else.

Each student run folder holds ``identity.json``: the run's *fingerprint* (its teacher set as
names + teacher digests, the weighting rule, the proxy set's digests of slices and labels, the
config fields that change the result, and the code version), its sha256 ``digest`` and the
``epochs`` trained for.
A run folder is reused (``result.json``) or resumed (``last.pt``) only when the digest matches;
otherwise its artefacts are wiped and the run retrains, with a warning that says why. Asking
for more epochs than recorded keeps ``last.pt`` (training continues) and drops ``result.json``.

Teacher digests are the sha256 of each site's ``best.pt`` (else ``teacher.json``) for local
runs; federated runs, which never see a checkpoint, use the sha256 of the teacher's logits on
the proxy set (what the student actually learns from).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from common.data.teacher_card import CARD_NAME
from common.io import atomic_write_json

if TYPE_CHECKING:
    from coordinator.distill.cache import Targets
    from coordinator.distill.config import ExperimentConfig, WeightingSpec
    from coordinator.distill.proxy import ProxySet

log = logging.getLogger(__name__)


class StudentRun(Protocol):
    """What identity needs of :class:`coordinator.distill.student.StudentRun`."""

    name: str
    teachers: list[int]
    weighting: WeightingSpec | None


class DistillData(Protocol):
    """What identity needs of :class:`coordinator.distill.student.DistillData`."""

    proxy: ProxySet
    targets: Targets | None
    site_names: list[str]
    teacher_ids: list[str] | None

IDENTITY = "identity.json"
ARTEFACTS = ("result.json", "last.pt", "best.pt", "metrics.csv", "curves.png", "overlays",
             "summary.json")
"""What a student run writes into its folder (and what a retrain wipes); ``seed*/`` too."""
_NOT_IDENTITY = {"device", "compile", "teacher_batch_size", "epochs"}
"""Student fields that do not change what is learnt (``epochs`` is handled as a resume)."""
_LATER_KD = {"rc_weight": 1.0, "teacher_field": "centre"}
"""KD fields added after results existed, with their defaults: left out of the fingerprint
while at the default, so earlier run folders stay valid."""


def code_version() -> str:
    """The installed ``fedmtkd`` version (``unknown`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedmtkd")
    except PackageNotFoundError:
        return "unknown"


def file_digest(path: Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def teacher_digest(teacher_dir: Path) -> str:
    """Digest of a site's teacher: its ``best.pt``, else its ``teacher.json``, else ``missing``."""
    for name in ("best.pt", CARD_NAME):
        if (teacher_dir / name).is_file():
            return f"{name}:{file_digest(teacher_dir / name)}"
    return "missing"


def targets_digest(targets: Targets, j: int) -> str:
    """Digest of teacher ``j``'s logits ``(N, K, S, S)`` on the proxy set (federated runs);
    streamed over chunks of slices (same bytes, same digest as one pass)."""
    from coordinator.distill.cache import iter_chunks

    h = hashlib.sha256()
    for _, part in iter_chunks(targets.select([j]), 256):
        h.update(part.logits[0].detach().cpu().float().contiguous().numpy().tobytes())
    return "logits:" + h.hexdigest()


def run_fingerprint(run: StudentRun, data: DistillData, cfg: ExperimentConfig) -> dict[str, Any]:
    """What determines ``run``'s result (JSON-ready; see the module docstring)."""
    ids = data.teacher_ids
    teachers = [{"name": data.site_names[j],
                 "digest": ids[j] if ids else targets_digest(_targets(data), j)}
                for j in run.teachers]
    student = cfg.student.model_dump(mode="json", exclude=_NOT_IDENTITY)
    return {"run": run.name, "teachers": teachers,
            "weighting": run.weighting.identity() if run.weighting else None,
            "proxy": data.proxy.digest, "proxy_label": cfg.proxy_label,
            "proxy_masks": _masks_digest(data.proxy.masks),
            "seed": cfg.seed,
            "student": student, "kd": _kd(cfg), "code": code_version()}


def _kd(cfg: ExperimentConfig) -> dict[str, Any]:
    """The KD settings of the fingerprint (fields of :data:`_LATER_KD` only when changed)."""
    kd = cfg.kd.model_dump(mode="json")
    return {k: v for k, v in kd.items() if k not in _LATER_KD or v != _LATER_KD[k]}


def _masks_digest(masks: Any) -> str:
    """sha256 of the proxy masks' bytes, streamed (a memmapped proxy is never read whole)."""
    from coordinator.distill.cache import masks_digest

    return masks_digest(masks)


def _targets(data: DistillData) -> Targets:
    if data.targets is None:
        raise ValueError("a run with teachers needs teacher targets")
    return data.targets


def digest_of(fingerprint: dict[str, Any]) -> str:
    """sha256 of the fingerprint's canonical JSON."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def claim_run_folder(out: Path, fingerprint: dict[str, Any], epochs: int) -> str:
    """Make ``out`` hold only work of ``fingerprint``; returns its digest.

    A folder of another fingerprint, of unknown identity (artefacts but no ``identity.json``)
    or trained for more epochs than asked is wiped, with a warning naming the reason."""
    digest = digest_of(fingerprint)
    why = _stale_reason(out, fingerprint, digest, epochs)
    if why is not None:
        log.warning("%s: retraining from scratch, the folder's result is stale: %s", out, why)
        _wipe(out)
    elif epochs > _recorded(out).get("epochs", epochs):
        (out / "result.json").unlink(missing_ok=True)  # continue from last.pt to more epochs
    atomic_write_json(out / IDENTITY, {"digest": digest, "epochs": epochs,
                                       "fingerprint": fingerprint})
    return digest


def _recorded(out: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((out / IDENTITY).read_text()))
    except (OSError, ValueError):
        return {}


def _stale_reason(out: Path, fingerprint: dict[str, Any], digest: str, epochs: int
                  ) -> str | None:
    """Why ``out``'s existing artefacts must not be reused, or None (nothing there / same)."""
    if not _artefacts(out):
        return None
    old = _recorded(out)
    if not old:
        return f"no readable {IDENTITY} (trained before result identity was recorded)"
    if old.get("digest") != digest:
        before = old.get("fingerprint", {})
        changed = sorted(k for k in set(before) | set(fingerprint)
                         if before.get(k) != fingerprint.get(k))
        return f"fingerprint changed in {', '.join(changed) or 'digest'}"
    if epochs < int(old.get("epochs", epochs)):
        return f"trained for {old['epochs']} epochs, {epochs} asked"
    return None


def _artefacts(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    return [p for p in out.iterdir() if p.name in ARTEFACTS
            or (p.is_dir() and p.name.startswith("seed"))]


def _wipe(out: Path) -> None:
    for p in _artefacts(out):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def cache_key(proxy_digest: str, teacher_id: str, at_form: str, at_p: int) -> str:
    """Key of one teacher's cached outputs: the proxy set, the teacher itself and the attention
    settings the maps were computed with (a retrained teacher is never served stale outputs)."""
    return hashlib.sha256(f"{proxy_digest}|{teacher_id}|{at_form}|{at_p}".encode()).hexdigest()
