"""Training sets of the baselines, read straight from the site folders (``--local`` only).

In ``--local`` the coordinator process already reads every site folder (teachers, test splits);
the baselines also read each site's private *training* split (the case ids of the teacher run's
``split.json``), prepared with the student's plan (the proxy's grid) and the site's own target
label, exactly as :func:`common.data.test_split.load_test_split` prepares the test cases.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from common.data.layout import discover_dataset
from common.data.native import whole_extents
from common.data.plan import Plan
from common.data.slices import load_volumes
from common.data.split import load_split
from common.data.test_split import site_plan
from coordinator.distill.config import SiteSpec
from coordinator.distill.proxy import ProxySet, proxy_from_volumes


def site_train_set(site: SiteSpec, size: int, plan: Plan | None) -> ProxySet:
    """The site's training-split slices as a :class:`ProxySet` (``images (N,1,S,S)``,
    ``masks (N,S,S)``) on the student's ``plan`` with the site's own labels, keeping its
    volumes when a field is wider than the canvas (``ProxySet.crop_sources``: such fields are
    trained on as whole-field crops, as a site's own training and FedAvg update draw them)."""
    split = load_split(site.teacher_dir / "split.json")
    own = site_plan(site.teacher_dir)
    use = plan or own
    if use is not None and own is not None:
        use = use.model_copy(update={"labels": own.labels, "label_name": own.label_name})
    vols = load_volumes(discover_dataset(site.data), split.train, size, plan=use)
    wide = any(v.wide for v in vols)  # volumes kept only when a field needs crops
    return dataclasses.replace(proxy_from_volumes(vols, plan=plan),
                               crop_sources=[(0, vols)] if wide else [])


def concat_sets(parts: list[ProxySet], plan: Plan | None) -> ProxySet:
    """One set holding every slice of ``parts`` in order (ids prefixed by the part index);
    each part's ``crop_sources`` moved to its rows (whole-field crops stay whole-field crops)."""
    starts = np.cumsum([0] + [len(p) for p in parts[:-1]]).tolist()
    sources = [(start + first, vols) for p, start in zip(parts, starts, strict=True)
               for first, vols in p.crop_sources]
    return ProxySet(np.concatenate([p.images for p in parts]),
                    np.concatenate([p.masks for p in parts]),
                    [f"{k}/{i}" for k, p in enumerate(parts) for i in p.slice_ids],
                    [h for p in parts for h in p.hashes], plan, _extents(parts), sources)


def _extents(parts: list[ProxySet]) -> np.ndarray | None:
    """The parts' ``(N, 4)`` extents stacked (whole canvas for a part without any)."""
    if all(p.extents is None for p in parts):
        return None
    hws = [(int(p.images.shape[-2]), int(p.images.shape[-1])) for p in parts]
    return np.concatenate([whole_extents(len(p), hw) if p.extents is None else p.extents
                           for p, hw in zip(parts, hws, strict=True)]).astype(np.int32)
