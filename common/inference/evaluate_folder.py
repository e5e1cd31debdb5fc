"""Score a folder of predicted masks against a folder of labels (``... evaluate``).

Each prediction ``<case>.nii[.gz]`` is paired with the label ``<case>_segmentation.nii[.gz]``
(multi-site prostate naming, where ``<case>.nii.gz`` is the image) or else ``<case>.nii[.gz]``
(MSD / nnU-Net ``labelsTr``) in the labels folder. The pair is
geometry-checked and the target label selected exactly as in training
(:func:`common.data.native.load_native_label`, ``dataset.json`` beside or above the labels
folder, ``--label``), then scored on the native grid with :func:`common.metrics.score_volume`
(spacing from the prediction's header in its array-axis order), the code the training report
uses. Outputs ``evaluation.csv`` (one row per case, then ``mean`` and ``std``),
``evaluation.json`` (strict JSON: an undefined HD95 is ``null``) and ``evaluation.md``.

Also the JSON form of per-case scores that training runs store (:func:`case_scores_json`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.metrics import SegScores

log = logging.getLogger(__name__)
METRIC_NAMES = ("dice", "voe", "hd95")
_SUFFIXES = (".nii.gz", ".nii")


def _finite(v: float) -> float | None:
    return None if math.isnan(v) or math.isinf(v) else v


def case_scores_json(scores: dict[str, SegScores]) -> dict[str, dict[str, float | None]]:
    """``{case: {"dice", "voe", "hd95"}}`` with an undefined (NaN) HD95 as ``None`` (strict
    JSON)."""
    return {case: {m: _finite(float(getattr(s, m))) for m in METRIC_NAMES}
            for case, s in scores.items()}


@dataclass(frozen=True)
class CasePair:
    """One prediction and its label."""

    case: str
    pred: Path
    label: Path


def _stem(path: Path) -> str | None:
    name = path.name
    return next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), None)


def pair_folders(pred_dir: Path, labels_dir: Path) -> list[CasePair]:
    """Every prediction paired with its label; a prediction without one is a one-line error."""
    from common.data.errors import data_error, utf8_name

    for folder in (pred_dir, labels_dir):
        if not folder.is_dir():
            raise data_error(folder, "folder not found")
    labels = {s: p for p in labels_dir.iterdir() if (s := _stem(utf8_name(p))) is not None}
    pairs = []
    for pred in sorted(pred_dir.iterdir()):
        case = _stem(utf8_name(pred))
        if case is None or not pred.is_file():
            continue
        label = labels.get(f"{case}_segmentation") or labels.get(
            f"{case}_Segmentation") or labels.get(case)  # Case00.nii.gz may be the image
        if label is None:
            raise data_error(pred, f"no label {case}.nii.gz or {case}_segmentation.nii.gz "
                                   f"in {labels_dir}")
        pairs.append(CasePair(case, pred, label))
    if not pairs:
        raise data_error(pred_dir, "no predicted masks (*.nii, *.nii.gz) in this folder")
    return pairs


def declared_labels(labels_dir: Path) -> tuple[dict[str, str], Path]:
    """``dataset.json`` labels beside or above the labels folder (``{}`` when there is none)
    and the file they came from (the folder itself when none)."""
    from common.data.layout import _labels

    for folder in (labels_dir, labels_dir.parent):
        path = folder / "dataset.json"
        if path.is_file():
            return _labels(json.loads(path.read_text()), path), path
    return {}, labels_dir


def score_pair(pair: CasePair, labels: list[int] | None, union: bool = False,
               declared: list[int] | None = None) -> SegScores:
    """Native-resolution Dice/VOE/HD95 of one prediction against its label (both headers
    compared before any voxel is read)."""
    from common.data.geometry import check_pair_headers
    from common.data.native import load_native_label
    from common.data.nifti import read_nifti
    from common.metrics import score_volume

    check_pair_headers(pair.pred, pair.label)
    pred = read_nifti(pair.pred, allow_empty=True)
    label = load_native_label(pair.label, pred, labels, union=union, declared=declared)
    return score_volume(pred.data != 0, label, pred.zooms)


def evaluate_folder(pred_dir: Path | str, labels_dir: Path | str, label: str | None = None
                    ) -> dict[str, SegScores]:
    """Per-case scores of every prediction in ``pred_dir`` (``label``: the target as in
    training's ``--label``, NAME|VALUE[,...] or ``all``; :mod:`common.data.labels`)."""
    from common.data.labels import declared_values, is_union, resolve_target

    pred_dir, labels_dir = Path(pred_dir), Path(labels_dir)
    pairs = pair_folders(pred_dir, labels_dir)
    declared, source = declared_labels(labels_dir)
    values, name = resolve_target(declared, label, source)
    union, fg = is_union(values, name), declared_values(declared)
    return {p.case: score_pair(p, values, union, fg) for p in pairs}


def summary_json(scores: dict[str, SegScores]) -> dict[str, float | None]:
    """:func:`common.metrics.summarise` with undefined values as ``None``."""
    from common.metrics import summarise

    return {k: _finite(v) for k, v in summarise(scores).items()}


def _cell(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def evaluation_markdown(scores: dict[str, SegScores]) -> str:
    """Per-case table, then mean and sd (HD95 in mm; ``n/a`` = undefined)."""
    cases = case_scores_json(scores)
    summ = summary_json(scores)
    lines = ["| case | Dice | VOE | HD95 mm |", "|---|---|---|---|"]
    lines += [f"| {c} | " + " | ".join(_cell(v[m]) for m in METRIC_NAMES) + " |"
              for c, v in cases.items()]
    for stat in ("mean", "std"):
        lines.append(f"| **{stat}** | "
                     + " | ".join(_cell(summ[f"{m}_{stat}"]) for m in METRIC_NAMES) + " |")
    undefined = int(summ["hd95_undefined"] or 0)
    note = f"\n{undefined} case(s) with an undefined HD95 (one mask empty).\n" if undefined else ""
    return "\n".join(lines) + "\n" + note


def write_evaluation(scores: dict[str, SegScores], out: Path, meta: dict[str, Any]) -> None:
    """``evaluation.csv``, ``evaluation.json`` and ``evaluation.md`` in ``out``."""
    from common.io import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    cases, summ = case_scores_json(scores), summary_json(scores)
    with (out / "evaluation.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "dice", "voe", "hd95_mm"])
        writer.writerows([c, *("" if v[m] is None else v[m] for m in METRIC_NAMES)]
                         for c, v in cases.items())
        for stat in ("mean", "std"):
            writer.writerow([stat, *("" if summ[f"{m}_{stat}"] is None else summ[f"{m}_{stat}"]
                                     for m in METRIC_NAMES)])
    atomic_write_json(out / "evaluation.json", {**meta, "cases": cases, "summary": summ})
    (out / "evaluation.md").write_text(evaluation_markdown(scores))
