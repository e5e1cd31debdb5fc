"""Scoring a FedBN row in ``--local``: each site's test cases with that site's own BatchNorm.

A FedBN model is not one model: the sites share every weight but the BatchNorm layers', and
each site keeps its own (:mod:`common.fedbn`). Site ``s``'s column is therefore the shared
weights plus ``s``'s BatchNorm state on ``s``'s held-out test cases, as the federated
``evaluate`` round does at the site (``EvalConfig.local_bn``). There is no single exportable
model and no pooled or proxy-set score of this row (which BatchNorm would it use?).
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.fedbn import load_site_bn
from common.models.base import SegModel
from coordinator.distill.student import DistillData, _site_scores

#: what a FedBN row and its checkpoint say about their model
FEDBN_NOTE = ("FedBN: shared weights without BatchNorm; each site scored with its own "
              "BatchNorm (kept at the site); no single model, not exported, no proxy score")


def fedbn_note(local_bn: bool) -> dict[str, str]:
    """``{"note": FEDBN_NOTE}`` for a FedBN row (``local_bn``), else ``{}``."""
    return {"note": FEDBN_NOTE} if local_bn else {}


#: run id under which the ``--local`` stand-in sites keep their BatchNorm state
LOCAL_RUN_ID = "local"


def fedbn_site_scores(model: SegModel, shared: dict[str, torch.Tensor], data: DistillData,
                      dev: torch.device, out: Path, states: Path, seed: int
                      ) -> tuple[dict[str, dict], dict[str, dict]]:
    """``(per-site summaries, per-site case scores)`` of the FedBN model whose shared weights
    are ``shared``: site ``s`` scored with ``s``'s BatchNorm kept under ``states / s``; a site
    without one (it trained no round) gets ``{"error": why}`` and no case scores."""
    sites, cases = dict[str, dict](), dict[str, dict]()
    for site, vols in data.site_tests.items():
        try:
            bn = load_site_bn(states / site, LOCAL_RUN_ID, seed)
        except FileNotFoundError as exc:
            sites[site] = {"error": str(exc)}
            continue
        model.load_state_dict({**{k: torch.as_tensor(v) for k, v in shared.items()}, **bn})
        one = DistillData(data.proxy, None, [site], {site: vols})
        s, c = _site_scores(model.eval(), one, dev, out)
        sites.update(s)
        cases.update(c)
    return sites, cases
