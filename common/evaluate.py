"""Slice-wise inference reassembled into volumes, 3D scoring, and Fig. 4-style overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.data.slices import Volume
from common.metrics import SegScores, score_volume, summarise
from common.training import autocast


@torch.no_grad()
def predict_volume(
    model: nn.Module, vol: Volume, device: torch.device, batch_size: int = 16, amp: bool = True
) -> np.ndarray:
    """Predict a whole volume slice by slice.

    Args:
        vol: ``vol.image`` is ``(D, S, S)`` float32.
    Returns:
        ``(D, S, S)`` uint8 argmax label map.
    """
    model.eval()
    out = []
    for start in range(0, vol.image.shape[0], batch_size):
        x = torch.from_numpy(vol.image[start : start + batch_size, None]).to(device)
        with autocast(device, amp):
            logits = model(x)
        out.append(logits.float().argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out, axis=0)


@torch.no_grad()
def predict_probs(
    model: nn.Module, image: np.ndarray, device: torch.device, batch_size: int = 16,
    amp: bool = True,
) -> np.ndarray:
    """Softmax probabilities of a prepared volume, slice by slice.

    Args:
        image: ``(D, S, S)`` float32 (``Volume.image`` / ``PreparedCase.image``).
    Returns:
        ``(D, K, S, S)`` float32 probabilities (input to :func:`common.data.native.to_native`).
    """
    model.eval()
    out = []
    for start in range(0, image.shape[0], batch_size):
        batch = np.ascontiguousarray(image[start : start + batch_size, None], np.float32)
        x = torch.from_numpy(batch).to(device)
        with autocast(device, amp):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out, axis=0).astype(np.float32)


def evaluate_volumes(
    model: nn.Module, volumes: list[Volume], device: torch.device, batch_size: int = 16
) -> tuple[dict[str, SegScores], dict[str, np.ndarray]]:
    """3D Dice/VOE/HD95 per case at NATIVE resolution, and the prepared-grid predictions.

    For a volume loaded from disk (``vol.case`` and ``vol.native_label`` set) the softmax
    probabilities are mapped back to the file's original grid and orientation
    (:func:`common.data.native.to_native`) and scored against the untouched original label
    with the file's own spacing (HD95 in mm). In-memory volumes without them are scored on the
    prepared grid with ``vol.spacing``. Returns ``(scores, preds)``; ``preds[case_id]`` is the
    ``(D, S, S)`` uint8 argmax on the prepared grid (for overlays).
    """
    scores: dict[str, SegScores] = {}
    preds: dict[str, np.ndarray] = {}
    for vol in volumes:
        probs = predict_probs(model, vol.image, device, batch_size)
        preds[vol.case_id] = probs.argmax(1).astype(np.uint8)
        scores[vol.case_id] = score_native(probs, vol)
    return scores, preds


def score_native(probs: np.ndarray, vol: Volume) -> SegScores:
    """Scores of ``(D, K, S, S)`` probabilities for ``vol`` (native grid when it has one)."""
    if vol.case is None or vol.native_label is None:
        return score_volume(probs.argmax(1).astype(np.uint8), vol.label, vol.spacing)
    from common.data.native import to_native

    native = to_native(probs, vol.case)
    return score_volume(native, vol.native_label, vol.case.native_zooms)


def mean_dice(scores: dict[str, SegScores]) -> float:
    """Mean 3D Dice over cases (0.0 for no cases)."""
    return float(summarise(scores)["dice_mean"]) if scores else 0.0


def _contour(mask: np.ndarray) -> np.ndarray:
    """Boolean 1-pixel inner contour of a 2D binary mask."""
    from scipy.ndimage import binary_erosion

    m = mask.astype(bool)
    return m & ~binary_erosion(m)


def save_overlay(
    image: np.ndarray, gt: np.ndarray, pred: np.ndarray, out: Path, title: str
) -> None:
    """Paper Fig. 4 style overlay: GT contour green, prediction red, intersection area yellow.

    Args:
        image: ``(S, S)`` float slice; gt, pred: ``(S, S)`` binary masks.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = np.percentile(image, [1, 99])
    rgb = np.repeat(np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)[..., None], 3, axis=2)
    inter = gt.astype(bool) & pred.astype(bool)
    rgb[inter] = 0.6 * rgb[inter] + 0.4 * np.array([1.0, 1.0, 0.0])
    rgb[_contour(gt)] = [0.0, 1.0, 0.0]
    rgb[_contour(pred)] = [1.0, 0.0, 0.0]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(rgb)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_case_overlays(
    volumes: list[Volume], preds: dict[str, np.ndarray], folder: Path, max_cases: int = 3
) -> list[Path]:
    """One overlay per case (the slice with the largest GT area) for the first ``max_cases``."""
    paths = []
    for vol in volumes[:max_cases]:
        z = int(vol.label.reshape(vol.label.shape[0], -1).sum(1).argmax())
        path = folder / f"overlay_{vol.case_id}_z{z:03d}.png"
        title = f"{vol.case_id} z={z}"
        save_overlay(vol.image[z], vol.label[z], preds[vol.case_id][z], path, title)
        paths.append(path)
    return paths
