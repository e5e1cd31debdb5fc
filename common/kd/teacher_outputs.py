"""What a site computes for proxy slices: teacher logits, attention maps and RC scalars.

The same function serves the in-process ``--local`` run (coordinator) and the federated ClientApp
(site node), so both paths send exactly the same quantities (never features, never weights). It
lives in ``common`` because both roles run it and neither role imports the other. It runs the
teacher on the slices exactly as given; both roles call it through
:func:`common.kd.plan_bridge.bridged_teacher_outputs`, which first maps the query slices to the
teacher's own plan and maps the outputs back to the query grid.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from common.kd.targets import FeatureTaps, TeacherTargets, compute_teacher_targets
from common.models.base import SegModel
from common.teacher_fields import at_sizes
from common.training import autocast


@torch.no_grad()
def teacher_outputs(
    model: SegModel, images: np.ndarray, masks: np.ndarray, device: torch.device,
    batch_size: int = 16, at_form: Literal["zagoruyko", "paper"] = "zagoruyko", p: int = 2,
    taps: FeatureTaps = "emkd",
) -> TeacherTargets:
    """Run the teacher over proxy slices in batches.

    Args:
        images: ``(N, 1, S, S)`` float32; masks: ``(N, S, S)`` uint8 proxy labels.
    Returns:
        TeacherTargets with J=1 on the CPU: logits ``(1, N, K, S, S)``, attention maps
        ``(1, N, S/2, S/2)`` (early) and ``(1, N, S/8, S/8)`` (deep), whatever the teacher's own
        strides, so that all sites' answers stack; RC scalars ``(1, N)``. With ``taps =
        "decoder"`` the two maps are the encoder's end at ``S/8`` and the decoder's last map
        at ``S/4`` (see :func:`common.kd.targets.tapped_features`); sizes from
        :func:`common.teacher_fields.at_sizes`.
    """
    model = model.to(device).eval()
    sizes = at_sizes(images.shape[-1], taps)  # agreed by every site
    parts = []
    for s in range(0, images.shape[0], batch_size):
        x = torch.from_numpy(images[s : s + batch_size]).to(device)
        y = torch.from_numpy(masks[s : s + batch_size].astype(np.int64)).to(device)
        with autocast(device):
            t = compute_teacher_targets(model, x, y, at_form=at_form, p=p, at_sizes=sizes,
                                        taps=taps)
        parts.append(t.map(lambda v: v.float().cpu()))
    return TeacherTargets.concat(parts)
