"""Compression of, and noise on, the teacher logits a site sends (configured per site).

Modes and bytes per slice for ``K`` classes and side ``S`` (array payload only; the ``.npy``
header Flower adds is ~128 B per array)::

    fp32        {"logits": float32 (N,K,S,S)}              4*K*S^2   (K=2, S=96: 73 728 B)
    fp16        {"logits": float16 (N,K,S,S)}              2*K*S^2   (K=2, S=96: 36 864 B)
    int8_probs  {"probs_u8": uint8 (N,C,S,S)}              C*S^2     C = K-1 ("foreground") or K
                                                                     (K=2, S=96, C=1: 9 216 B)
    downsample  {"logits_ds": float16 (N,K,S/f,S/f)}       2*K*S^2/f^2 (K=2, S=96, f=4: 2 304 B)

so int8_probs with one uint8 channel for K=2 is exactly 1/8 of fp32 and 1/4 of fp16.

``int8_probs`` sends ``round(255 * softmax(logits / T))``; :func:`decompress_logits` returns
``T * log(p)`` (p clipped to half a quantisation step and renormalised), i.e. logits up to a
per-pixel constant, which softmax ignores. ``downsample`` average-pools logits by ``f`` and is
upsampled bilinearly (``align_corners=False``, as ``torch.nn.functional.interpolate``).

Noise (``noise_sigma > 0``) is Gaussian, on probabilities (clipped and renormalised, then sent
as log-probabilities) or on logits, drawn from OS entropy unless a generator is passed. The same
``sigma`` covers every other released array (:func:`noise_features`): attention maps
``(N,h,w)`` get per-element std ``sigma/sqrt(h*w)`` (the scale of a unit-L2 map, so the noise
has expected L2 norm ``sigma`` per map) and region-contrast cosines ``(N,)`` get std ``sigma``
(clipped to [-1, 1]).
:func:`common.audit.dp.dp_epsilon` accounts for it; see its docstring for what that bound does and
does not mean.
Only numpy is imported.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Literal

import numpy as np
from pydantic import Field

from common.config import StrictModel

_EPS = 1e-6


class CompressionConfig(StrictModel):
    """How a site encodes the logits of a query reply."""

    mode: Literal["fp32", "fp16", "int8_probs", "downsample"] = "fp16"
    downsample_factor: Literal[2, 4] = 2
    int8_classes: Literal["foreground", "all"] = "foreground"
    noise_sigma: float = Field(default=0.0, ge=0.0, le=1e6)
    noise_on: Literal["probs", "logits"] = "probs"
    temperature: float = Field(default=1.0, gt=0.0, le=100.0)


def softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (float32)."""
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def _avg_pool(x: np.ndarray, f: int) -> np.ndarray:
    n, k, h, w = x.shape
    if h % f or w % f:
        raise ValueError(f"side {h}x{w} is not divisible by downsample_factor {f}")
    return x.reshape(n, k, h // f, f, w // f, f).mean(axis=(3, 5), dtype=np.float32)


@cache
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation weights, ``align_corners=False`` with edge clamping."""
    m = np.zeros((n_out, n_in), dtype=np.float32)
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (src - lo).astype(np.float32)
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def upsample_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """(N,K,h,w) -> (N,K,size,size), bilinear, ``align_corners=False``."""
    mh, mw = _resize_matrix(x.shape[2], size), _resize_matrix(x.shape[3], size)
    return np.einsum("ih,nkhw,jw->nkij", mh, x.astype(np.float32), mw).astype(np.float32)


def _add_noise(x: np.ndarray, cfg: CompressionConfig, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise on logits, or on probabilities (returned as ``T * log p``)."""
    if cfg.noise_on == "logits":
        return (x + rng.normal(0.0, cfg.noise_sigma, x.shape)).astype(np.float32)
    p = softmax(x / cfg.temperature) + rng.normal(0.0, cfg.noise_sigma, x.shape)
    p = np.clip(p, _EPS, 1.0)
    p /= p.sum(axis=1, keepdims=True)
    return (cfg.temperature * np.log(p)).astype(np.float32)


def noise_features(maps: dict[str, np.ndarray], scalars: dict[str, np.ndarray], sigma: float,
                   rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Gaussian noise on attention maps ``(N,h,w)`` and RC cosines ``(N,)`` (module docstring).

    Returns new float32 arrays under the same names; ``sigma == 0`` returns copies unchanged.
    """
    rng = rng or np.random.default_rng()
    out: dict[str, np.ndarray] = {}
    for name, m in maps.items():
        std = sigma / math.sqrt(math.prod(m.shape[1:])) if sigma > 0 else 0.0
        out[name] = (m.astype(np.float32) + rng.normal(0.0, 1.0, m.shape) * std).astype(np.float32)
    for name, v in scalars.items():
        noisy = v.astype(np.float32) + rng.normal(0.0, 1.0, v.shape) * sigma
        out[name] = np.clip(noisy, -1.0, 1.0).astype(np.float32) if sigma > 0 else noisy
    return out


def compress_logits(logits: np.ndarray, cfg: CompressionConfig,
                    rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Encode float logits ``(N,K,S,S)`` as the payload of ``cfg.mode`` (module docstring)."""
    if logits.ndim != 4:
        raise ValueError(f"logits must be (N,K,S,S), got shape {logits.shape}")
    x = np.asarray(logits, dtype=np.float32)
    if cfg.mode == "downsample":
        x = _avg_pool(x, cfg.downsample_factor)
    if cfg.noise_sigma > 0:
        x = _add_noise(x, cfg, rng or np.random.default_rng())
    if cfg.mode == "fp32":
        return {"logits": np.ascontiguousarray(x)}
    if cfg.mode == "int8_probs":
        p = softmax(x / cfg.temperature)
        if cfg.int8_classes == "foreground":
            p = p[:, 1:]
        return {"probs_u8": np.rint(p * 255.0).astype(np.uint8)}
    key = "logits_ds" if cfg.mode == "downsample" else "logits"
    return {key: x.astype(np.float16)}


def _dequantise(q: np.ndarray, num_classes: int, cfg: CompressionConfig) -> np.ndarray:
    """uint8 probabilities -> ``T * log p`` for all ``num_classes``."""
    p = q.astype(np.float32) / 255.0
    if cfg.int8_classes == "foreground":
        p = np.concatenate([np.clip(1.0 - p.sum(axis=1, keepdims=True), 0.0, 1.0), p], axis=1)
    if p.shape[1] != num_classes:
        raise ValueError(f"probs_u8 decodes to {p.shape[1]} classes, expected {num_classes}")
    p = np.maximum(p, 0.5 / 255.0)
    p /= p.sum(axis=1, keepdims=True)
    return (cfg.temperature * np.log(p)).astype(np.float32)


def decompress_logits(payload: dict[str, np.ndarray], cfg: CompressionConfig, size: int,
                      num_classes: int = 2) -> np.ndarray:
    """Inverse of :func:`compress_logits`: float32 logits ``(N,K,size,size)``."""
    if cfg.mode == "int8_probs":
        out = _dequantise(payload["probs_u8"], num_classes, cfg)
    elif cfg.mode == "downsample":
        out = upsample_bilinear(payload["logits_ds"].astype(np.float32), size)
    else:
        out = payload["logits"].astype(np.float32)
    if out.shape[1:] != (num_classes, size, size):
        raise ValueError(f"decoded logits shape {out.shape}, expected (N,{num_classes},"
                         f"{size},{size})")
    return out


def payload_schema(cfg: CompressionConfig, n: int, size: int,
                   num_classes: int = 2) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Wire arrays of the compressed logits: name -> (dtype, shape), like ``reply_schema``."""
    if cfg.mode == "int8_probs":
        c = num_classes - 1 if cfg.int8_classes == "foreground" else num_classes
        return {"probs_u8": ("uint8", (n, c, size, size))}
    if cfg.mode == "downsample":
        s = size // cfg.downsample_factor
        return {"logits_ds": ("float16", (n, num_classes, s, s))}
    return {"logits": (cfg.mode.replace("fp", "float"), (n, num_classes, size, size))}


def bytes_per_slice(cfg: CompressionConfig, size: int, num_classes: int = 2) -> int:
    """Array bytes one slice's logits cost on the wire under ``cfg``."""
    total = 0
    for dtype, shape in payload_schema(cfg, 1, size, num_classes).values():
        total += np.dtype(dtype).itemsize * math.prod(shape)
    return total

