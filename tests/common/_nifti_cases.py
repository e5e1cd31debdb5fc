"""Synthetic 'real-looking' NIfTI cases written with nibabel (geometry tests).

Non-square 448 x 360 slices, a few slices deep, uint16 intensities, LPS / RAS / permuted
affines, 0.5 x 0.5 x 3 mm and 0.27 x 0.27 x 2.2 mm spacing, labels {0, 1}, {0, 255} or
multi-label {0, 1, 2, 3}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

IN_PLANE = (448, 360)  # (X, Y) voxels in the file
DEPTH = 4


@dataclass(frozen=True)
class Geometry:
    """File layout: orientation code, (sx, sy, sz) mm, origin (mm)."""

    code: str
    zooms: tuple[float, float, float]
    origin: tuple[float, float, float] = (-60.0, 40.0, 12.5)

    def affine(self) -> np.ndarray:
        """Affine whose ``nib.aff2axcodes`` is ``code`` (axis k of the file -> code[k])."""
        world = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
        aff = np.zeros((4, 4))
        for k, c in enumerate(self.code):
            axis, sign = world[c]
            aff[axis, k] = sign * self.zooms[k]
        aff[:3, 3], aff[3, 3] = self.origin, 1.0
        return aff

    def shape(self) -> tuple[int, int, int]:
        """File data shape: the S/I axis has DEPTH voxels, the others 448 then 360."""
        sizes = iter(IN_PLANE)
        return tuple(DEPTH if c in "SI" else next(sizes) for c in self.code)  # type: ignore[return-value]


LPS_05 = Geometry("LPS", (0.5, 0.5, 3.0))
RAS_027 = Geometry("RAS", (0.27, 0.27, 2.2))
PERMUTED = Geometry("ASL", (0.5, 3.0, 0.5))  # A, S, L file axes: depth is the middle axis
GEOMETRIES = {"lps_0.5x0.5x3": LPS_05, "ras_0.27x0.27x2.2": RAS_027, "asl_permuted": PERMUTED}


def organ(shape: tuple[int, int, int], code: str, shift: float = 0.0) -> np.ndarray:
    """Off-centre ellipse in every slice but the first (bool, file order), asymmetric on
    purpose so that a flipped or transposed mask does not overlap itself."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    inplane = [k for k, c in enumerate(code) if c not in "SI"]
    depth = next(k for k, c in enumerate(code) if c in "SI")
    (a, na), (b, nb) = ((grids[k], shape[k]) for k in inplane)
    inside = ((a - 0.42 * na - shift) / (0.18 * na)) ** 2 + ((b - 0.55 * nb) / (0.2 * nb)) ** 2 < 1
    return inside & (grids[depth] > 0)


def write_case(folder: Path, name: str, geo: Geometry, kind: str = "01", seed: int = 0,
               label_geo: Geometry | None = None) -> tuple[Path, Path]:
    """Write ``imagesTr/<name>_0000.nii.gz`` + ``labelsTr/<name>.nii.gz``; ``kind``: ``01``,
    ``0255`` or ``multi`` (1 = organ, 2 = a box elsewhere, 3 = a strip)."""
    shape, rng = geo.shape(), np.random.default_rng(seed)
    mask = organ(shape, geo.code)
    image = rng.normal(800, 60, shape) + 900 * mask
    image[(slice(0, 3),) * 3] = 65000  # a few hot outlier voxels (uint16 max region)
    label = np.zeros(shape, np.uint8)
    label[mask] = 255 if kind == "0255" else 1
    if kind == "multi":
        label[:40, :30, :] = 2
        label[-20:, -10:, :] = 3
    paths = (folder / "imagesTr" / f"{name}_0000.nii.gz", folder / "labelsTr" / f"{name}.nii.gz")
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.clip(image, 0, 65535).astype(np.uint16), geo.affine()),
             paths[0])
    nib.save(nib.Nifti1Image(label, (label_geo or geo).affine()), paths[1])
    return paths


def write_dataset(folder: Path, geo: Geometry, kind: str = "01", n: int = 1,
                  modality: str = "MRI") -> Path:
    """An nnU-Net v2 style dataset of ``n`` cases with a ``dataset.json`` label map."""
    for i in range(n):
        write_case(folder, f"case_{i}", geo, kind, seed=i)
    labels = {"background": 0, "organ": 1}
    if kind == "multi":
        labels = {"background": 0, "spleen": 1, "liver": 2, "kidney": 3}
    meta = {"channel_names": {"0": modality}, "labels": labels, "file_ending": ".nii.gz",
            "numTraining": n}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder
