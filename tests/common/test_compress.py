"""Logit compression round trips, wire sizes and noise (DP accounting: test_dp.py)."""

from __future__ import annotations

import numpy as np
import pytest

from common.compress import (
    CompressionConfig,
    bytes_per_slice,
    compress_logits,
    decompress_logits,
    payload_schema,
    softmax,
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


def test_noise_features_scale_and_clipping() -> None:
    from common.compress import noise_features

    n, h = 2000, 16
    maps = np.zeros((n, h, h), np.float32)
    maps[:, 0, 0] = 1.0  # unit-L2 maps
    rc = np.full((n,), 0.99, np.float32)
    same = noise_features({"at": maps}, {"rc": rc}, 0.0)
    assert np.array_equal(same["at"], maps) and np.array_equal(same["rc"], rc)
    out = noise_features({"at": maps}, {"rc": rc}, 0.2, np.random.default_rng(0))
    norms = np.linalg.norm((out["at"] - maps).reshape(n, -1), axis=1)
    assert np.sqrt((norms ** 2).mean()) == pytest.approx(0.2, rel=0.02)  # E||noise||^2 = sigma^2
    assert out["rc"].max() <= 1.0 and (out["rc"] == 1.0).mean() > 0.4  # clipped at 1
    assert np.std(out["rc"][out["rc"] < 0.9]) > 0.05


def test_noised_reply_noises_every_array_and_still_decodes() -> None:
    import torch

    from common.kd.targets import TeacherTargets
    from common.protocol import QueryConfig, decode_teacher_reply, encode_teacher_reply, slice_hash

    n = 3
    t = TeacherTargets(logits=torch.randn(1, n, 2, 32, 32), at_early=torch.rand(1, n, 16, 16),
                       at_deep=torch.rand(1, n, 4, 4), rc_early=torch.full((1, n), 0.5),
                       rc_deep=torch.full((1, n), -0.5))
    cfg = QueryConfig(run_id="r", chunk=0, n_chunks=1, size=32,
                      slice_hashes=[slice_hash(np.zeros((1, 32, 32)))] * n)
    for sigma in (0.0, 0.1):
        codec = CompressionConfig(mode="fp32", noise_sigma=sigma)
        _, back = decode_teacher_reply(encode_teacher_reply("s", cfg, t, codec), n, 32, "test")
        for key in ("logits", "at_early", "at_deep", "rc_early", "rc_deep"):
            changed = not torch.allclose(getattr(back, key), getattr(t, key), atol=1e-2)
            assert changed == (sigma > 0), (key, sigma)


# DP accounting and release sensitivity: tests/common/test_dp.py


def test_int8_at_the_kd_temperature_keeps_the_soft_tail() -> None:
    # a confident background pixel, logit margin -20: at T = 4 the student's target is
    # sigmoid(-5) = 0.00669. Quantised at T = 1, p_fg rounds to 0, is clipped to 0.5/255 and
    # softens to sigmoid(ln(0.00196/0.99804) / 4) = 0.1737; quantised at T = 4 it is
    # round(0.00669 * 255) = 2 -> 2/255 = 0.00784.
    logits = np.zeros((1, 2, 2, 2), np.float32)
    logits[:, 1] = -20.0

    def soft_fg(temperature: float) -> float:
        cfg = CompressionConfig(mode="int8_probs", temperature=temperature)
        back = decompress_logits(compress_logits(logits, cfg), cfg, size=2)
        return float(softmax(back / 4.0)[0, 1, 0, 0])

    assert soft_fg(1.0) == pytest.approx(0.1737, abs=1e-3)
    assert soft_fg(4.0) == pytest.approx(0.00784, abs=1e-4)
