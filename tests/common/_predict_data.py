"""Synthetic NIfTI cases and a tiny model for the predict / evaluate tests.

Two cases in the nnU-Net v2 raw layout (``dataset.json``, ``imagesTr/<case>_0000.nii.gz``,
``labelsTr/<case>.nii.gz``): non-square slices, anisotropic spacing, one LPS and one RAS
affine, uint16 intensities, an ellipsoid label {0, 1}.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

# (shape (X, Y, Z), zooms (zx, zy, zz), axis signs of the affine: LPS flips x and y)
CASES = {"lps01": ((40, 28, 7), (0.8, 0.5, 3.0), (-1, -1, 1)),
         "ras02": ((36, 44, 5), (0.6, 0.6, 2.2), (1, 1, 1))}
SIZE = 32
PLAN = {"size": SIZE, "spacing": [1.0, 1.0], "norm": "mri", "labels": [1],
        "label_name": "prostate"}


def affine(zooms: tuple[float, ...], signs: tuple[int, ...]) -> np.ndarray:
    """Diagonal affine with the given voxel sizes and axis signs, origin off zero."""
    a = np.diag([s * z for s, z in zip(signs, zooms, strict=True)] + [1.0])
    a[:3, 3] = [12.5, -30.0, 7.25]
    return a


def volumes(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint16 image with a bright ellipsoid, and its {0, 1} label."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    label = ((x / 0.5) ** 2 + (y / 0.4) ** 2 + (z / 0.9) ** 2 <= 1).astype(np.uint8)
    rng = np.random.default_rng(seed)
    image = 300 + 900 * label.astype(np.int64) + rng.integers(0, 200, size=shape)
    return image.astype(np.uint16), label


def write_dataset(root: Path) -> Path:
    """The two cases as an nnU-Net v2 raw dataset at ``root``."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i, (case, (shape, zooms, signs)) in enumerate(CASES.items()):
        image, label = volumes(shape, i)
        aff = affine(zooms, signs)
        nib.save(nib.Nifti1Image(image, aff), str(root / "imagesTr" / f"{case}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(label, aff), str(root / "labelsTr" / f"{case}.nii.gz"))
    meta = {"name": "synthetic", "channel_names": {"0": "T2"},
            "labels": {"background": 0, "prostate": 1}, "file_ending": ".nii.gz",
            "numTraining": len(CASES)}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def tiny_model(dataset: Path, steps: int = 30):  # type: ignore[no-untyped-def]
    """A tiny_unet fitted for ``steps`` Adam steps to the prepared slices of ``dataset`` (so
    its masks are neither empty nor full: Dice about 0.9); seeded, in eval mode."""
    import torch

    from common.data.layout import discover_dataset
    from common.data.plan import Plan
    from common.data.slices import load_volumes
    from common.models import build_model

    vols = load_volumes(discover_dataset(dataset), None, SIZE, plan=Plan.model_validate(PLAN))
    x = torch.from_numpy(np.concatenate([v.image for v in vols])[:, None])
    y = torch.from_numpy(np.concatenate([v.label for v in vols])).long()
    torch.manual_seed(0)
    model = build_model("tiny_unet", in_channels=1, num_classes=2).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def write_teacher(folder: Path, model) -> Path:  # type: ignore[no-untyped-def]
    """A teacher run folder (``best.pt`` + ``teacher.json`` with :data:`PLAN`)."""
    from common.io import atomic_torch_save
    from common.models.checkpoint import model_state

    folder.mkdir(parents=True, exist_ok=True)
    kw = {"in_channels": 1, "num_classes": 2}
    atomic_torch_save(folder / "best.pt", {**model_state(model, "tiny_unet", kw), "epoch": 0})
    card = {"architecture": "tiny_unet", "input": {"size": SIZE}, "plan": PLAN}
    (folder / "teacher.json").write_text(json.dumps(card))
    return folder
