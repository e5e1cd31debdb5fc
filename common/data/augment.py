"""Joint 2D augmentation of an image, its mask and any number of auxiliary maps (paper §4.1).

Geometric transforms (affine shift/scale/rotate, flips, elastic, grid and optical distortion)
are applied identically to the image, the mask (nearest, constant 0 border) and every map;
maps of any resolution are resized to (H, W) bilinear, transformed, then resized back.
Photometric transforms (brightness/contrast, coarse dropout) touch the image only. Geometric
and photometric parts use separate seeded generators, so for a fixed seed the maps do not
depend on the photometric probabilities.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
from pydantic import Field

from common.config import StrictModel

Maps = dict[str, np.ndarray]
VALID_THRESHOLD = 0.999  # a warped all-ones map below this mixes in padding (bilinear border)


class AugmentConfig(StrictModel):
    """Augmentation probabilities and limits; defaults are the paper's values (§4.1)."""

    enabled: bool = True
    rotate_limit: float = Field(default=90.0, ge=0, le=180)
    scale_limit: float = Field(default=0.2, ge=0, lt=1)
    shift_limit: float = Field(default=0.0625, ge=0, le=0.5)
    shift_scale_rotate_p: float = Field(default=0.5, ge=0, le=1)
    hflip_p: float = Field(default=0.5, ge=0, le=1)
    vflip_p: float = Field(default=0.5, ge=0, le=1)
    elastic_p: float = Field(default=0.1, ge=0, le=1)
    grid_distortion_p: float = Field(default=0.1, ge=0, le=1)
    optical_distortion_p: float = Field(default=0.1, ge=0, le=1)
    brightness_contrast_p: float = Field(default=0.2, ge=0, le=1)
    brightness_limit: float = Field(default=0.2, ge=0, le=10)
    contrast_limit: float = Field(default=0.2, ge=0, le=1)
    coarse_dropout_p: float = Field(default=0.2, ge=0, le=1)


class FloatBrightnessContrast(A.ImageOnlyTransform):  # type: ignore[misc]
    """``img * alpha + beta`` without albumentations' [0, 1] clipping of float images.

    ``alpha`` in 1 +- contrast_limit, ``beta`` in +- brightness_limit (in units of the
    normalised image, i.e. of its std for z-scored input).
    """

    def __init__(
        self, brightness_limit: float = 0.2, contrast_limit: float = 0.2, p: float = 0.5
    ) -> None:
        super().__init__(p=p)
        self.brightness_limit = brightness_limit
        self.contrast_limit = contrast_limit

    def get_params(self) -> dict[str, float]:
        c, b = self.contrast_limit, self.brightness_limit
        return {"alpha": 1.0 + self.py_random.uniform(-c, c), "beta": self.py_random.uniform(-b, b)}

    def apply(
        self, img: np.ndarray, alpha: float = 1.0, beta: float = 0.0, **params: Any
    ) -> np.ndarray:
        return (img * np.float32(alpha) + np.float32(beta)).astype(img.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_limit", "contrast_limit")


def _geometric(cfg: AugmentConfig) -> list[Any]:
    """Geometric transforms with bilinear images/maps, nearest masks, constant-0 borders."""
    border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}
    s, t = cfg.scale_limit, cfg.shift_limit
    return [
        A.Affine(
            scale=(1 - s, 1 + s),
            translate_percent=(-t, t),
            rotate=(-cfg.rotate_limit, cfg.rotate_limit),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            p=cfg.shift_scale_rotate_p,
            **border,
        ),
        A.HorizontalFlip(p=cfg.hflip_p),
        A.VerticalFlip(p=cfg.vflip_p),
        A.ElasticTransform(p=cfg.elastic_p, **border),
        A.GridDistortion(p=cfg.grid_distortion_p, **border),
        A.OpticalDistortion(p=cfg.optical_distortion_p, **border),
    ]


def _photometric(cfg: AugmentConfig) -> list[Any]:
    """Image-only intensity transforms."""
    return [
        FloatBrightnessContrast(
            cfg.brightness_limit, cfg.contrast_limit, p=cfg.brightness_contrast_p
        ),
        A.CoarseDropout(
            num_holes_range=(1, 8),
            hole_height_range=(0.05, 0.15),
            hole_width_range=(0.05, 0.15),
            fill=0,
            p=cfg.coarse_dropout_p,
        ),
    ]


class JointAugment:
    """Callable ``(image (H, W) float32, mask (H, W) uint8, maps | None) -> same triple``.

    Each map is float32 (C, h, w) or (h, w) at any resolution and comes back with its own
    shape and dtype float32. With ``cfg.enabled`` False the call is the identity. Borders are
    filled with 0, so an all-ones map passed along comes back as the validity of each pixel
    (< 1 where padding came in; coordinator/distill/dataset.py uses this).
    """

    def __init__(self, cfg: AugmentConfig, seed: int | None = None) -> None:
        self.cfg = cfg
        photo_seed = None if seed is None else seed + 1_000_003
        self._geo = A.Compose(_geometric(cfg), additional_targets={"maps": "image"}, seed=seed)
        self._photo = A.Compose(_photometric(cfg), seed=photo_seed)

    def reseed(self, seed: int) -> None:
        """Restart both random streams from ``seed`` (see :func:`reseed_worker`)."""
        self._geo.set_random_seed(seed)
        self._photo.set_random_seed(seed + 1_000_003)

    def rng_state(self) -> list[tuple[Any, Any]]:
        """(numpy, python) state of every random stream of both pipelines (exact resume)."""
        return [(t.random_generator.bit_generator.state, t.py_random.getstate())
                for t in _streams(self._geo) + _streams(self._photo)]

    def set_rng_state(self, state: list[tuple[Any, Any]]) -> None:
        """Restore what :meth:`rng_state` returned."""
        for t, (np_state, py_state) in zip(
            _streams(self._geo) + _streams(self._photo), state, strict=True
        ):
            t.random_generator.bit_generator.state = np_state
            t.py_random.setstate(py_state)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, maps: Maps | None = None
    ) -> tuple[np.ndarray, np.ndarray, Maps | None]:
        if not self.cfg.enabled:
            return image, mask, maps
        h, w = image.shape
        data: dict[str, np.ndarray] = {
            "image": np.ascontiguousarray(image, np.float32),
            "mask": np.ascontiguousarray(mask, np.uint8),
        }
        if maps:
            data["maps"] = _stack_maps(maps, (h, w))
        out = self._geo(**data)
        img = self._photo(image=out["image"])["image"].astype(np.float32)
        new_maps = _unstack_maps(out["maps"], maps) if maps else maps
        return img, out["mask"].astype(np.uint8), new_maps


def reseed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a random stream of its own for each worker.

    Every worker process gets a copy of the dataset, and with it of the same seeded augmenter,
    so without this all workers repeat the same transforms (the classic PyTorch + NumPy
    fault). Torch gives worker ``k`` the seed ``base + k`` with ``base`` drawn from the
    loader's generator each epoch, so runs stay reproducible and epochs differ.
    """
    import random

    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    seed = int(info.seed % 2**32)
    random.seed(seed)
    np.random.seed(seed)
    augment = getattr(info.dataset, "augment", None)
    if isinstance(augment, JointAugment):
        augment.reseed(seed)


def _streams(node: Any) -> list[Any]:
    """``node`` and every transform nested in it: each owns its own seeded random streams."""
    return [node, *(t for child in getattr(node, "transforms", []) for t in _streams(child))]


def build_augment(cfg: AugmentConfig, seed: int | None = None) -> JointAugment:
    """Build the joint augmentation described by ``cfg`` (seeded when ``seed`` is given)."""
    return JointAugment(cfg, seed)


def _stack_maps(maps: Maps, hw: tuple[int, int]) -> np.ndarray:
    """All map channels resized bilinear to ``hw`` and stacked to (H, W, sum C) float32."""
    chans = []
    for arr in maps.values():
        a = np.asarray(arr, np.float32)
        for ch in a.reshape(-1, *a.shape[-2:]):
            chans.append(cv2.resize(ch, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR))
    return np.ascontiguousarray(np.stack(chans, axis=-1), np.float32)


def _unstack_maps(stacked: np.ndarray, like: Maps) -> Maps:
    """Inverse of :func:`_stack_maps`: split channels and resize each back to its own size."""
    stacked = stacked.reshape(*stacked.shape[:2], -1)
    out: Maps = {}
    k = 0
    for name, arr in like.items():
        shape = np.shape(arr)
        n = 1 if len(shape) == 2 else int(np.prod(shape[:-2]))
        chans = [
            cv2.resize(
                np.ascontiguousarray(stacked[..., k + i]),
                (shape[-1], shape[-2]),
                interpolation=cv2.INTER_LINEAR,
            )
            for i in range(n)
        ]
        out[name] = np.stack(chans).reshape(shape).astype(np.float32)
        k += n
    return out
