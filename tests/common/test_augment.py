"""Joint augmentation: geometric consistency across targets, image-only photometrics."""

from __future__ import annotations

import cv2
import numpy as np

from common.data.augment import AugmentConfig, build_augment

GEO_ONLY = {
    "shift_scale_rotate_p": 1.0,
    "hflip_p": 1.0,
    "vflip_p": 1.0,
    "elastic_p": 1.0,
    "grid_distortion_p": 1.0,
    "optical_distortion_p": 1.0,
    "brightness_contrast_p": 0.0,
    "coarse_dropout_p": 0.0,
}


def _sample(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    img = np.sin(xx / 7.0) + np.cos(yy / 5.0) + 0.02 * xx
    mask = (((yy - 30) / 14) ** 2 + ((xx - 24) / 10) ** 2 < 1).astype(np.uint8)
    return (img + 2.0 * mask).astype(np.float32), mask


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(a, (size, size), interpolation=cv2.INTER_LINEAR)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_maps_follow_image_geometry() -> None:
    img, mask = _sample()
    maps = {
        "logits": np.stack([img, -img]),
        "att_half": _resize(img, 32),
        "att_eighth": _resize(img, 8)[None],
    }
    for seed in range(4):
        out_img, out_mask, out_maps = build_augment(AugmentConfig(**GEO_ONLY), seed=seed)(
            img, mask, maps
        )
        assert out_maps is not None
        assert out_maps["logits"].shape == (2, 64, 64) and out_maps["att_half"].shape == (32, 32)
        assert out_maps["att_eighth"].shape == (1, 8, 8)
        assert _corr(out_maps["logits"][0], out_img) > 0.95
        assert _corr(out_maps["logits"][1], out_img) < -0.95
        assert _corr(_resize(out_maps["att_half"], 64), out_img) > 0.95
        assert _corr(out_maps["att_eighth"][0], _resize(out_img, 8)) > 0.85
        assert out_img.dtype == np.float32 and out_mask.dtype == np.uint8
        assert set(np.unique(out_mask)) <= {0, 1}
        assert not np.array_equal(out_img, img)


def test_mask_follows_image() -> None:
    img, mask = _sample()
    cfg = AugmentConfig(**{**GEO_ONLY, "elastic_p": 0.0, "grid_distortion_p": 0.0})
    out_img, out_mask, _ = build_augment(cfg, seed=1)(img, mask)
    inside = out_img[out_mask == 1].mean()
    outside = out_img[(out_mask == 0) & (out_img != 0)].mean()
    assert inside > outside + 1.0


def test_photometric_touches_image_only() -> None:
    img, mask = _sample()
    maps = {"logits": np.stack([img, -img]), "att": _resize(img, 16)}
    photo = {**GEO_ONLY, "brightness_contrast_p": 1.0, "coarse_dropout_p": 1.0}
    g_img, g_mask, g_maps = build_augment(AugmentConfig(**GEO_ONLY), seed=7)(img, mask, maps)
    p_img, p_mask, p_maps = build_augment(AugmentConfig(**photo), seed=7)(img, mask, maps)
    assert g_maps is not None and p_maps is not None
    assert not np.allclose(g_img, p_img)
    np.testing.assert_array_equal(g_mask, p_mask)
    for name in maps:
        np.testing.assert_array_equal(g_maps[name], p_maps[name])
    assert p_img.min() < 0  # no [0, 1] clipping of normalised images


def test_seeded_determinism_and_defaults() -> None:
    img, mask = _sample()
    cfg = AugmentConfig()
    assert (cfg.rotate_limit, cfg.scale_limit, cfg.shift_limit) == (90, 0.2, 0.0625)
    assert (cfg.hflip_p, cfg.elastic_p, cfg.brightness_contrast_p) == (0.5, 0.1, 0.2)
    a = [build_augment(cfg, seed=11)(img, mask)[0] for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])


def test_disabled_is_identity() -> None:
    img, mask = _sample()
    maps = {"att": _resize(img, 16)}
    out_img, out_mask, out_maps = build_augment(AugmentConfig(enabled=False), seed=0)(
        img, mask, maps
    )
    np.testing.assert_array_equal(out_img, img)
    np.testing.assert_array_equal(out_mask, mask)
    assert out_maps is not None
    np.testing.assert_array_equal(out_maps["att"], maps["att"])


class _SameSlice:
    """Every item is the same slice, augmented: differences come from the augmenter only."""

    def __init__(self) -> None:
        self.augment = build_augment(AugmentConfig(**GEO_ONLY), seed=5)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> np.ndarray:
        return self.augment(*_sample())[0]


def _worker_batches(init: object) -> list[np.ndarray]:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(_SameSlice(), batch_size=1, num_workers=2, worker_init_fn=init,
                        generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    return [b[0].numpy() for b in loader]  # items 0, 2 from worker 0; 1, 3 from worker 1


def test_workers_draw_their_own_augmentations_reproducibly() -> None:
    from common.data.augment import reseed_worker

    plain = _worker_batches(None)
    np.testing.assert_array_equal(plain[0], plain[1])  # the fault: both workers repeat the same
    first = _worker_batches(reseed_worker)
    assert not np.array_equal(first[0], first[1])
    for a, b in zip(first, _worker_batches(reseed_worker), strict=True):
        np.testing.assert_array_equal(a, b)  # same loader seed, same augmentations
