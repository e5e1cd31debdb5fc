"""Scoring a student on the labelled proxy set, for runs where no site holds a test case.

With ``small_site = "train_on_all"`` at every site no student row has a held-out score. The
proxy set is the coordinator's own public data and carries labels (phantoms, MSD-style public
sets), so each student row is then scored on it instead: every proxy case reloaded from
``cfg.proxy`` in the student's plan (``ProxySet.plan``) and scored like a site's test case (3D
Dice / VOE / HD95 on the case's original grid,
:func:`common.inference.evaluate.evaluate_volumes`). The
student was trained on those very scans, so these scores are **optimistic**: they rank rows,
they do not estimate generalisation. The report says so on its first lines
(:mod:`coordinator.distill.report`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from common.data.layout import discover_dataset
from common.data.plan import Plan
from common.data.slices import load_volumes
from common.inference.evaluate import evaluate_volumes
from common.inference.evaluate_folder import case_scores_json
from common.metrics import SegScores, summarise
from common.models.base import SegModel

PROXY_NOTE = "scored on the labelled proxy (the student trained on it: optimistic)"


def no_site_score(sites: dict[str, dict]) -> bool:
    """Whether no site gave a defined Dice (no held-out case anywhere)."""
    return not any(isinstance(v.get("dice_mean"), float) and not math.isnan(v["dice_mean"])
                   for v in sites.values())


def score_on_proxy(model: SegModel, root: Path, plan: Plan, device: torch.device
                   ) -> tuple[dict[str, float], dict[str, dict]] | None:
    """(summary, per-case scores ``{caseNNN: {dice, voe, hd95}}``) of ``model`` on every case of
    the proxy dataset at ``root`` in ``plan``, one case in memory at a time; None when no proxy
    label has a voxel of the target (nothing to score)."""
    info = discover_dataset(root)
    scores: dict[str, SegScores] = {}
    labelled = False
    for case in info.cases:
        vol = load_volumes(info, [case.case_id], plan.size, plan=plan)[0]
        labelled = labelled or bool(vol.label.any())
        scores.update(evaluate_volumes(model, [vol], device)[0])
    if not labelled:
        return None
    per_case = case_scores_json(scores).values()
    return summarise(scores), {f"case{i:03d}": v for i, v in enumerate(per_case)}


__all__ = ["PROXY_NOTE", "no_site_score", "score_on_proxy"]
