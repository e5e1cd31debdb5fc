"""The teacher rows (top block of the paper's Table 3): each teacher on every site's test set.

Computed in-process (``--local``; a federation never moves a teacher), each teacher's row is
kept in ``<out>/teacher_rows/<site>.json`` (:class:`TeacherRowRecord`, read and written here
only) under a key of everything its scores depend on: the teacher's weights and plan, each
test site's data folder and held-out split, the student size and the installed version. A rerun
with the same key reuses the row instead of scoring every test set again (about 20 min on the
prostate benchmark on 2 cores); a run stopped half way keeps the teachers it finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from pydantic import ValidationError

from common.config import StrictModel
from common.data.teacher_card import TeacherCard
from common.data.test_split import load_test_split, site_plan
from common.inference.evaluate import evaluate_volumes
from common.io import atomic_write_json
from common.metrics import summarise
from common.models.checkpoint import load_model
from common.training import select_device
from coordinator.distill.config import ExperimentConfig, SiteSpec
from coordinator.distill.identity import code_version, file_digest, teacher_digest
from coordinator.distill.results_file import ResultRow

log = logging.getLogger(__name__)

RECORD_VERSION = 1
FOLDER = "teacher_rows"


class TeacherRowRecord(StrictModel):
    """One teacher's row (validated as every result row is) and the key it was computed under."""

    version: int = RECORD_VERSION
    key: str
    row: ResultRow


def row_key(cfg: ExperimentConfig, teacher: SiteSpec) -> str:
    """sha256 of what ``teacher``'s scores on every test set depend on."""
    def split(site: SiteSpec) -> str:
        path = site.teacher_dir / "split.json"
        return file_digest(path) if path.is_file() else "none"

    parts = {"teacher": teacher_digest(teacher.teacher_dir),
             "plan": (p.model_dump_json() if (p := site_plan(teacher.teacher_dir)) else "none"),
             "tests": [[s.name, str(Path(s.data).resolve()), split(s)] for s in cfg.sites],
             "size": cfg.student.size, "code": code_version()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _path(cfg: ExperimentConfig, site: SiteSpec) -> Path:
    return cfg.out / FOLDER / f"{site.name}.json"


def read_row(path: Path, key: str) -> ResultRow | None:
    """The row kept at ``path`` under ``key`` (None: missing, unreadable or another key)."""
    if not path.is_file():
        return None
    try:
        rec = TeacherRowRecord.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, OSError, UnicodeDecodeError):
        return None
    return rec.row if rec.key == key and rec.version == RECORD_VERSION else None


def write_row(path: Path, key: str, row: ResultRow) -> None:
    """Keep ``row`` at ``path`` under ``key`` (atomically)."""
    atomic_write_json(path, TeacherRowRecord(key=key, row=row).model_dump(mode="json"))


def _arch(site: SiteSpec) -> str:
    """The site teacher's architecture from its card (``?`` when unknown)."""
    card = TeacherCard.read(site.teacher_dir, missing_ok=True)
    return str(card.architecture) if card and "architecture" in card.model_fields_set else "?"


def _score_teacher(cfg: ExperimentConfig, site: SiteSpec, done: int, t0: float) -> ResultRow:
    """``site``'s teacher on every site's test set, prepared in the teacher's own plan."""
    dev = select_device(cfg.student.device)
    model, _ = load_model(site.teacher_dir / "best.pt", dev)
    plan = site_plan(site.teacher_dir)
    n = len(cfg.sites) ** 2
    scores: dict[str, dict] = {}
    for s in cfg.sites:
        vols = load_test_split(s.data, s.teacher_dir, cfg.student.size, plan)
        scores[s.name] = summarise(evaluate_volumes(model.to(dev), vols, dev)[0])
        k, took = done + len(scores), time.perf_counter() - t0
        log.info("[distill] teacher rows: %s on %s's test set (%d/%d, %.0f s, ETA %.0f s)",
                 site.name, s.name, k, n, took, took / k * (n - k))
    mean = sum(v["dice_mean"] for v in scores.values()) / len(scores)
    return {"run": f"teacher_{site.name}", "teachers": [site.name], "weighting": None,
            "sites": scores, "mean_dice": mean, "arch": _arch(site)}


def teacher_rows(cfg: ExperimentConfig) -> list[ResultRow]:
    """Each teacher scored on every site's test set (kept rows reused, see module doc); logs
    each (teacher, test set) pair as it finishes, with an ETA."""
    rows: list[ResultRow] = []
    t0, scored = time.perf_counter(), 0
    for site in cfg.sites:
        key, path = row_key(cfg, site), _path(cfg, site)
        row = read_row(path, key)
        if row is not None:
            log.info("[distill] teacher rows: %s reused from %s", site.name, path)
        else:
            row = _score_teacher(cfg, site, scored, t0)
            scored += len(cfg.sites)
            write_row(path, key, row)
        rows.append(row)
    return rows
