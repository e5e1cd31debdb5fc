"""Proxy slices paired with cached teacher outputs, augmented jointly."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from common.data.augment import JointAugment
from common.kd.targets import TeacherTargets
from coordinator.distill.proxy import ProxySet

MAP_KEYS = ("logits", "at_early", "at_deep")
VALID_THRESHOLD = 0.999  # a warped all-ones map below this mixes in padding (bilinear border)


class DistillDataset(Dataset):
    """Item ``i``: a proxy slice, its label and the J teachers' outputs for it.

    Returned dict: ``image (1,S,S)`` float, ``mask (S,S)`` long, ``valid (S,S)`` float (1 = a
    real pixel, 0 = padding brought in by a rotation/shift/distortion), ``index`` int and, when
    targets are given, ``logits (J,K,S,S)``, ``at_early (J,h0,w0)``, ``at_deep (J,h1,w1)``,
    ``rc_early (J,)``, ``rc_deep (J,)``. Geometric augmentation moves the image, the label,
    every teacher map and an all-ones validity map together (zero-filled borders); pixels where
    the warped validity is below 0.999 are invalid (KDLoss leaves them out of KL and AT).
    Photometric augmentation touches the image only. RC scalars stay as cached from the
    un-augmented slice: prototype pooling ignores pixel positions, so this is an approximation
    exact up to the network's equivariance (measured in tests/common/test_kd_terms.py).
    """

    def __init__(
        self, proxy: ProxySet, targets: TeacherTargets | None,
        augment: JointAugment | None = None, renormalise_at: bool = True,
    ) -> None:
        self.proxy, self.targets, self.augment = proxy, targets, augment
        self.renormalise_at = renormalise_at

    def __len__(self) -> int:
        return len(self.proxy)

    def _maps(self, i: int) -> dict[str, np.ndarray]:
        t = self.targets
        assert t is not None
        j, k = t.logits.shape[0], t.logits.shape[2]
        return {
            "logits": t.logits[:, i].reshape(j * k, *t.logits.shape[-2:]).numpy(),
            "at_early": t.at_early[:, i].numpy(),
            "at_deep": t.at_deep[:, i].numpy(),
        }

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, mask = self.proxy.images[i, 0], self.proxy.masks[i]
        maps = self._maps(i) if self.targets is not None else {}
        maps["valid"] = np.ones(img.shape, np.float32)
        if self.augment is not None:
            img, mask, aug_maps = self.augment(img, mask, maps)
            maps = aug_maps or {}
        valid = (maps.pop("valid") >= VALID_THRESHOLD).astype(np.float32)
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None],
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
            "valid": torch.from_numpy(valid),
            "index": i,
        }
        if self.targets is not None:
            item.update(self._teacher_item(i, maps))
        return item

    def _teacher_item(self, i: int, maps: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        t = self.targets
        assert t is not None
        j, k = t.logits.shape[0], t.logits.shape[2]
        out = {key: torch.from_numpy(np.ascontiguousarray(maps[key], dtype=np.float32))
               for key in MAP_KEYS}
        out["logits"] = out["logits"].reshape(j, k, *out["logits"].shape[-2:])
        if self.renormalise_at:  # zero-padding by rotations changes the L2 norm
            for key in ("at_early", "at_deep"):
                a = out[key]
                out[key] = F.normalize(a.flatten(1), dim=1).reshape(a.shape)
        out["rc_early"], out["rc_deep"] = t.rc_early[:, i], t.rc_deep[:, i]
        return out


def batch_targets(batch: dict[str, torch.Tensor], device: torch.device) -> TeacherTargets:
    """Collated ``(B, J, ...)`` teacher fields -> TeacherTargets ``(J, B, ...)`` on ``device``."""
    names = (*MAP_KEYS, "rc_early", "rc_deep")
    return TeacherTargets(**{n: batch[n].transpose(0, 1).contiguous().to(device) for n in names})
