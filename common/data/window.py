"""Whole-field-of-view inference: sliding windows of the plan's canvas with Gaussian blending.

A scan whose resampled field of view is wider than the plan's ``size`` (e.g. a 303 mm field at
0.5 mm through a 384 px canvas) is never centre-cropped at inference: the network runs on
``size x size`` windows overlapping by :data:`OVERLAP` (50 %, as nnU-Net), and each window's
class probabilities are blended with a Gaussian importance map (sigma = 1/8 of the window, as
nnU-Net), so window borders weigh little. MONAI's ``sliding_window_inference`` does the tiling
and blending. A field that fits the canvas is one window: the model's output as is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

OVERLAP = 0.5
SIGMA_SCALE = 0.125
ProbsFn = Callable[[np.ndarray], np.ndarray]  # (N, S, S) float32 -> (N, K, S, S) float32


def window_probs(probs_fn: ProbsFn, image: np.ndarray, size: int, overlap: float = OVERLAP,
                 batch_size: int = 16) -> np.ndarray:
    """Class probabilities of every pixel of ``image`` from ``size``-pixel windows.

    Args:
        probs_fn: prepared slices ``(N, S, S)`` -> softmax probabilities ``(N, K, S, S)``.
        image: ``(D, GH, GW)`` float32 with ``GH, GW >= size``
            (:attr:`common.data.native.PreparedCase.whole_image`).
    Returns:
        ``(D, K, GH, GW)`` float32 probabilities (Gaussian-weighted mean over the windows that
        cover each pixel; sums to 1 over K).
    """
    img = np.ascontiguousarray(image, np.float32)
    if img.shape[1:] == (size, size):
        return np.asarray(probs_fn(img), np.float32)
    probs = window_blend(probs_fn, img, size, overlap, batch_size)
    return probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)


def window_blend(fn: ProbsFn, image: np.ndarray, size: int, overlap: float = OVERLAP,
                 batch_size: int = 16) -> np.ndarray:
    """Any per-pixel output of ``fn`` (``(N, S, S)`` -> ``(N, K, S, S)``: probabilities or
    logits) over the whole ``(D, GH, GW)`` ``image`` (``GH, GW >= size``): the
    Gaussian-weighted mean over the ``size``-pixel windows covering each pixel (MONAI
    ``sliding_window_inference``), ``(D, K, GH, GW)`` float32; ``fn(image)`` as is when the
    image is one window."""
    img = np.ascontiguousarray(image, np.float32)
    if img.shape[1:] == (size, size):
        return np.asarray(fn(img), np.float32)
    if min(img.shape[1:]) < size:
        raise ValueError(f"image {img.shape} is smaller than the {size} px window")
    import torch
    from monai.inferers import sliding_window_inference

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(fn(x[:, 0].numpy()), np.float32))

    with torch.no_grad():
        out = sliding_window_inference(torch.from_numpy(img[:, None]), (size, size),
                                       batch_size, predictor, overlap=overlap, mode="gaussian",
                                       sigma_scale=SIGMA_SCALE)
    return np.asarray(out.numpy() if isinstance(out, torch.Tensor) else out, np.float32)


__all__ = ["OVERLAP", "SIGMA_SCALE", "window_blend", "window_probs"]
