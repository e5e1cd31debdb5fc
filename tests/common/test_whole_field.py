"""Whole-field-of-view inference: a structure in the corner of a scan wider than the canvas is
segmented (sliding windows with Gaussian blending), on non-square anisotropic scans, with the
result on each case's original grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.data.layout import CaseRef
from common.data.nifti import read_nifti, save_nifti
from common.data.plan import Plan
from common.data.slices import load_volume
from common.data.window import window_probs
from common.inference.predict import Predictor, batched, predict_folder
from common.metrics import dice

SHAPE = (3, 70, 90)  # (z, y, x): 70 x 90 px in-plane, more than twice a 32 px canvas
SPACING = (3.0, 0.5, 0.8)  # anisotropic in-plane and through-plane


def _scan(root: Path, name: str = "scan") -> tuple[Path, Path, np.ndarray]:
    """Dark noisy scan with bright blocks in two corners; returns image, label, (z, y, x)
    truth."""
    rng = np.random.default_rng(0)
    img = rng.normal(0.0, 1.0, SHAPE).astype(np.float32)
    truth = np.zeros(SHAPE, np.uint8)
    truth[:, 1:9, 78:89] = 1  # top right corner: far outside a centred 32 px crop
    truth[1:, 60:68, 2:12] = 1  # bottom left corner
    img[truth == 1] = 100.0
    image, label = root / f"{name}.nii.gz", root / "labels" / f"{name}.nii.gz"
    save_nifti(image, img, SPACING)
    save_nifti(label, truth, SPACING, np.uint8)
    return image, label, truth


class Oracle(nn.Module):
    """Pixel-wise oracle: foreground where the normalised intensity is above 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = 8.0 * (x - 2.0)
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


def _oracle_logits(x: np.ndarray) -> np.ndarray:
    return Oracle()(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("spacing,min_dice", [((0.5, 0.8), 1.0), ((1.0, 1.0), 0.85)])
def test_predict_segments_the_corners_of_a_scan_wider_than_the_canvas(
        tmp_path: Path, spacing: tuple[float, float], min_dice: float) -> None:
    image, _, truth = _scan(tmp_path)
    plan = Plan(size=32, spacing=spacing, norm="mri")
    out = predict_folder(Predictor(plan, batched(_oracle_logits), "oracle"), tmp_path,
                         tmp_path / "masks")
    mask = read_nifti(out[0], allow_empty=True)
    pred_zyx = mask.data.transpose(2, 1, 0)
    assert pred_zyx.shape == SHAPE  # the case's original grid
    assert mask.zooms == pytest.approx((SPACING[2], SPACING[1], SPACING[0]))
    for corner in (np.s_[:, :20, 60:], np.s_[:, 50:, :30]):
        assert dice(pred_zyx[corner] > 0, truth[corner] > 0) >= min_dice - 1e-9


def test_overlays_are_drawn_on_the_scan_grid(tmp_path: Path) -> None:
    _scan(tmp_path)
    plan = Plan(size=32, spacing=(0.5, 0.8), norm="mri")
    predict_folder(Predictor(plan, batched(_oracle_logits), "oracle"), tmp_path,
                   tmp_path / "masks", overlays=True)
    # z = 1 and 2 hold both corners (168 px): the first largest is z = 1
    (png,) = (tmp_path / "masks" / "overlays").iterdir()
    assert png.name == "overlay_scan_z001.png"


def test_site_scoring_covers_the_whole_field(tmp_path: Path) -> None:
    from common.inference.evaluate import evaluate_volumes

    image, label, truth = _scan(tmp_path)
    plan = Plan(size=32, spacing=(0.5, 0.8), norm="mri", labels=[1])
    vol = load_volume(CaseRef("scan", image, label), "MRI", 32, plan=plan)
    assert vol.image.shape == (3, 32, 32) and vol.case is not None
    assert vol.case.whole_image.shape == (3, 70, 90)
    scores, preds = evaluate_volumes(Oracle(), [vol], torch.device("cpu"))
    assert scores["scan"].dice == pytest.approx(1.0)  # the corners are on no 32 px crop
    np.testing.assert_array_equal(preds["scan"], truth.transpose(2, 1, 0))  # file (x, y, z)
    from common.inference.evaluate import save_case_overlays

    (png,) = save_case_overlays([vol], preds, tmp_path / "overlays")
    assert png.name == "overlay_scan_z001.png"  # the largest ground-truth slice


def test_gaussian_blending_weights_window_centres() -> None:
    """Each window predicts foreground with probability = 1 at its centre column only when the
    window starts at column 0: blended probabilities stay in [0, 1], sum to 1 and are pulled
    towards the windows whose centre is near."""
    image = np.zeros((1, 32, 64), np.float32)
    image[..., :32] = 1.0  # the left window sees ones, the others zeros

    def probs(x: np.ndarray) -> np.ndarray:
        fg = (x.mean(axis=(1, 2)) > 0.99).astype(np.float32)[:, None, None, None]
        fg = np.broadcast_to(fg, (x.shape[0], 1, 32, 32))
        return np.concatenate([1 - fg, fg], axis=1)

    out = window_probs(probs, image, 32)
    assert out.shape == (1, 2, 32, 64)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    row = out[0, 1, 16]
    assert row[0] == pytest.approx(1.0, abs=1e-6)  # only the left window covers column 0
    assert row[63] == pytest.approx(0.0, abs=1e-6)
    assert 0.9 < row[20] < 1.0 and row[40] < 0.1  # the nearer window centre dominates
    assert np.all(np.diff(row) <= 1e-6)  # monotone from the left window to the right ones
