"""Slice-wise inference reassembled into volumes, 3D scoring, and Fig. 4-style overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.data.native import to_native
from common.data.nifti import Reader
from common.data.slices import Volume
from common.data.window import window_probs
from common.kd.functional import hard_labels
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
        out.append(hard_labels(logits.float()).to(torch.uint8).cpu().numpy())
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
    """3D Dice/VOE/HD95 per case at NATIVE resolution, and the predictions there.

    For a volume loaded from disk (``vol.case`` and ``vol.native_label`` set) the softmax
    probabilities are mapped back to the file's original grid and orientation
    (:func:`common.data.native.to_native`) and scored against the untouched original label
    with the file's own spacing (HD95 in mm). In-memory volumes without them are scored on the
    prepared grid with ``vol.spacing``. The whole field of view is predicted, in sliding
    windows of the canvas when it is wider (:func:`whole_probs`). Returns ``(scores, preds)``;
    ``preds[case_id]`` is the uint8 prediction that was scored: ``(X, Y, Z)`` on the file's
    own grid (like ``vol.native_label``), or ``(D, S, S)`` for in-memory volumes.
    """
    scores: dict[str, SegScores] = {}
    preds: dict[str, np.ndarray] = {}
    for vol in volumes:
        probs = whole_probs(model, vol, device, batch_size)
        if vol.case is None or vol.native_label is None:
            pred = hard_labels(torch.from_numpy(probs)).numpy().astype(np.uint8)
            scores[vol.case_id] = score_volume(pred, vol.label, vol.spacing)
        else:
            pred = to_native(probs, vol.case)
            scores[vol.case_id] = score_volume(pred, vol.native_label, vol.case.native_zooms)
        preds[vol.case_id] = pred
    return scores, preds


def whole_probs(model: nn.Module, vol: Volume, device: torch.device, batch_size: int = 16
                ) -> np.ndarray:
    """Probabilities over the whole field of view of ``vol``: ``(D, K, GH, GW)``
    (:attr:`~common.data.native.PreparedCase.whole_image`, sliding windows of the canvas,
    :func:`common.data.window.window_probs`); ``(D, K, S, S)`` for in-memory volumes."""
    image = vol.image if vol.case is None else vol.case.whole_image
    return window_probs(lambda img: predict_probs(model, img, device, batch_size), image,
                        int(vol.image.shape[-1]), batch_size=batch_size)


def score_native(probs: np.ndarray, vol: Volume) -> SegScores:
    """Scores of ``(D, K, S, S)`` (or whole-field ``(D, K, GH, GW)``) probabilities for ``vol``
    (native grid when it has one)."""
    if vol.case is None or vol.native_label is None:
        return score_volume(probs.argmax(1).astype(np.uint8), vol.label, vol.spacing)
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

    rgb = overlay_rgb(image, gt, pred)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(rgb)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


def overlay_rgb(image: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``(S, S, 3)`` RGB of a ``(S, S)`` slice (1-99 % window) with the ground-truth contour
    green, the prediction's red and their intersection tinted yellow (binary ``gt``, ``pred``)."""
    lo, hi = np.percentile(image, [1, 99])
    rgb = np.repeat(np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)[..., None], 3, axis=2)
    inter = gt.astype(bool) & pred.astype(bool)
    rgb[inter] = 0.6 * rgb[inter] + 0.4 * np.array([1.0, 1.0, 0.0])
    rgb[_contour(gt)] = [0.0, 1.0, 0.0]
    rgb[_contour(pred)] = [1.0, 0.0, 0.0]
    return rgb


def radiological(slice_yx: np.ndarray) -> np.ndarray:
    """A canonical RAS axial slice ``(y, x)`` as a radiologist views it: anterior up, the
    patient's right on the viewer's left (rows: y descending; columns: x descending)."""
    return np.ascontiguousarray(slice_yx[::-1, ::-1])


def save_radiological_overlay(image: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...],
                              out: Path, title: str, gt: np.ndarray | None = None) -> Path:
    """Overlay on the scan's own grid, radiological convention, true aspect ratio, legend.

    Args:
        image, pred, gt: canonical RAS ``(z, y, x)`` arrays on the scan's own grid (``gt``
            optional: then the title gets the case's 3D Dice and the slice is the one with the
            largest ground-truth area, else the largest predicted area).
        spacing: ``(sz, sy, sx)`` mm.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from common.metrics import dice

    ref = pred if gt is None else gt
    z = int(ref.reshape(ref.shape[0], -1).sum(1).argmax())
    gt_z = np.zeros_like(pred[z]) if gt is None else gt[z]
    img, p, g = (radiological(a) for a in (image[z], pred[z], gt_z))
    rgb = overlay_rgb(img, g, p)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(rgb, aspect=float(spacing[1]) / float(spacing[2]), interpolation="nearest")
    score = "" if gt is None else f", 3D Dice {dice(pred > 0, gt > 0):.3f}"
    ax.set_title(f"{title} z={z}{score}\nradiological: A up, patient R on the left", fontsize=8)
    handles = [Patch(color="red", label="prediction")]
    if gt is not None:
        handles += [Patch(color="lime", label="ground truth"), Patch(color="yellow",
                                                                     label="overlap")]
    ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.7)
    ax.axis("off")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def save_case_overlays(
    volumes: list[Volume], preds: dict[str, np.ndarray], folder: Path, max_cases: int = 3,
    read: Reader | None = None,
) -> list[Path]:
    """One overlay per case for the first ``max_cases``: on the scan's own grid in
    radiological convention with a legend and the case's 3D Dice
    (:func:`save_radiological_overlay`; the image is re-read from its file) for volumes from
    disk, the Fig. 4 style prepared-grid overlay for in-memory ones (``preds`` as
    :func:`evaluate_volumes` returns them). ``read``: how the image is re-read (default
    :func:`~common.data.nifti.read_nifti`; a :class:`~common.data.nifti.ReadOnce` hands out the
    file its run kept)."""
    paths = []
    for vol in volumes[:max_cases]:
        pred = preds[vol.case_id]
        if vol.case is not None and vol.native_label is not None:
            paths.append(_native_overlay(vol, pred, folder, read))
            continue
        z = int(vol.label.reshape(vol.label.shape[0], -1).sum(1).argmax())
        path = folder / f"overlay_{vol.case_id}_z{z:03d}.png"
        save_overlay(vol.image[z], vol.label[z], pred[z], path, f"{vol.case_id} z={z}")
        paths.append(path)
    return paths


def _native_overlay(vol: Volume, pred: np.ndarray, folder: Path, read: Reader | None) -> Path:
    """Radiological overlay of a volume from disk (prediction and label in the file's order)."""
    from common.data.nifti import read_nifti, to_canonical_zyx

    assert vol.case is not None and vol.native_label is not None
    image, spacing = (read or read_nifti)(vol.case.path, first_channel=True).canonical_zyx()
    gt = to_canonical_zyx(vol.native_label, vol.case.ornt)
    z = int(gt.reshape(gt.shape[0], -1).sum(1).argmax())
    return save_radiological_overlay(image, to_canonical_zyx(pred, vol.case.ornt), spacing,
                                     folder / f"overlay_{vol.case_id}_z{z:03d}.png",
                                     vol.case_id, gt=gt)
