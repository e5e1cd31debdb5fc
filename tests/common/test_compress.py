"""Logit compression round trips, wire sizes and the DP accounting helper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.compress import (
    CompressionConfig,
    bytes_per_slice,
    compress_logits,
    decompress_logits,
    dp_epsilon,
    payload_schema,
    upsample_bilinear,
)

N, K, S = 4, 2, 32


def smooth_logits(seed: int = 0) -> np.ndarray:
    """Smooth random logits: a coarse random field upsampled, scaled to +-6."""
    coarse = np.random.default_rng(seed).normal(0, 3, (N, K, S // 8, S // 8)).astype(np.float32)
    return upsample_bilinear(coarse, S)


def nbytes(payload: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in payload.values())


def test_fp16_roundtrip() -> None:
    x = smooth_logits()
    cfg = CompressionConfig(mode="fp16")
    y = decompress_logits(compress_logits(x, cfg), cfg, S)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() < 1e-2  # fp16 relative step 2^-11 on |x| < 16


def test_int8_probs_argmax_agreement() -> None:
    x = smooth_logits(1)
    for classes in ("foreground", "all"):
        cfg = CompressionConfig(mode="int8_probs", int8_classes=classes)
        payload = compress_logits(x, cfg)
        assert payload["probs_u8"].dtype == np.uint8
        y = decompress_logits(payload, cfg, S)
        agree = (y.argmax(1) == x.argmax(1)).mean()
        assert agree > 0.99, (classes, agree)


def test_downsample_shapes() -> None:
    x = smooth_logits(2)
    for f in (2, 4):
        cfg = CompressionConfig(mode="downsample", downsample_factor=f)
        payload = compress_logits(x, cfg)
        assert payload["logits_ds"].shape == (N, K, S // f, S // f)
        assert decompress_logits(payload, cfg, S).shape == (N, K, S, S)
    const = np.full((1, K, S, S), 2.5, np.float32)
    cfg = CompressionConfig(mode="downsample", downsample_factor=4)
    assert np.allclose(decompress_logits(compress_logits(const, cfg), cfg, S), 2.5)


def test_byte_ratios() -> None:
    x = smooth_logits()
    sizes = {m: nbytes(compress_logits(x, CompressionConfig(mode=m)))  # type: ignore[arg-type]
             for m in ("fp32", "fp16", "int8_probs")}
    assert sizes["fp32"] == N * K * S * S * 4
    assert sizes["int8_probs"] / sizes["fp32"] == 1 / 8  # exactly: 1 uint8 channel vs 2 fp32
    assert sizes["fp16"] / sizes["fp32"] == 1 / 2
    ds = nbytes(compress_logits(x, CompressionConfig(mode="downsample", downsample_factor=4)))
    assert ds / sizes["fp32"] == 1 / 32
    assert bytes_per_slice(CompressionConfig(mode="int8_probs"), 96) == 96 * 96
    assert bytes_per_slice(CompressionConfig(mode="fp32"), 96) == 73_728
    schema = payload_schema(CompressionConfig(mode="fp16"), N, S)
    assert schema == {"logits": ("float16", (N, K, S, S))}


def test_noise_changes_output_but_keeps_shape() -> None:
    x = smooth_logits()
    for on in ("probs", "logits"):
        cfg = CompressionConfig(mode="fp32", noise_sigma=0.05, noise_on=on)  # type: ignore[arg-type]
        y = compress_logits(x, cfg, np.random.default_rng(0))["logits"]
        assert y.shape == x.shape and np.isfinite(y).all() and not np.allclose(y, x)
        assert (y.argmax(1) == x.argmax(1)).mean() > 0.9


def test_dp_epsilon() -> None:
    # hand check: ln(1.25e5) = ln 1.25 + 5 ln 10 = 0.223144 + 11.512925 = 11.736069;
    # sqrt(2 * 11.736069) = sqrt(23.472138) = 4.844805; / sigma 10 -> 0.4844805 per query
    assert dp_epsilon(10.0, 1.0, 1e-5, 1) == pytest.approx(0.4844805, abs=1e-6)
    assert dp_epsilon(10.0, 1.0, 1e-5, 4) == pytest.approx(4 * 0.4844805, abs=1e-5)
    eps_sigma = [dp_epsilon(s, 1.0, 1e-5, 10) for s in (5.0, 10.0, 20.0, 40.0)]
    assert eps_sigma == sorted(eps_sigma, reverse=True)
    eps_n = [dp_epsilon(20.0, 1.0, 1e-5, n, "advanced") for n in (1, 10, 100, 1000)]
    assert eps_n == sorted(eps_n) and eps_n[-1] < 1000 * eps_n[0]
    assert dp_epsilon(1.0, 1.0, 1e-5, 1) == math.inf  # eps0 > 1: the classic bound does not hold
    with pytest.raises(ValueError):
        dp_epsilon(0.0, 1.0, 1e-5, 1)
