"""Synthetic multi-site phantoms (prostate MRI, spleen CT) written as NIfTI in MSD layout.

Each case is a deformed ellipsoid organ in textured tissue with distractor blobs. A *site style*
is a scanner signature (see ``STYLES``): slice thickness, in-plane spacing (the organ has the
same physical size, so its pixel size differs), multiplicative bias field, noise level,
organ-to-tissue contrast gap, gamma (MRI), in-plane blur (CT: reconstruction kernel), field of
view and, for CT, a stored-value offset and intensity window. Spacings in ``STYLES`` hold for
the default (24, 96, 96) shape; other shapes rescale them so the physical field of view stays
fixed. Everything is deterministic given (seed, preset, style, case index).

The styles themselves (A, B, C stress styles; realistic P1-P3, PX, S1, S2, SX) are in
:mod:`common.data.styles`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator
from scipy import ndimage

from common.config import MAX_SEED, StrictModel
from common.data.nifti import save_nifti
from common.data.styles import STYLE_KEYS, STYLES, SiteStyle, known_style
from common.io import atomic_write_json

__all__ = ["STYLES", "PhantomSpec", "SiteStyle", "known_style", "make_from_spec", "make_phantom",
           "make_prostate_sites", "make_proxy", "phantom_case", "style_shape", "style_spacing"]

Shape = tuple[int, int, int]
_DEFAULT_SHAPE: Shape = (24, 96, 96)
_PRESETS = {"prostate": ("MRI", 0), "spleen": ("CT", 1)}


class PhantomSpec(StrictModel):
    """Arguments of :func:`make_phantom` as a config model."""

    preset: Literal["prostate", "spleen"] = "prostate"
    site_style: str = "A"  # a key of STYLES
    n_cases: int = Field(default=12, ge=1, le=10_000)
    shape: tuple[int, int, int] = _DEFAULT_SHAPE
    seed: int = Field(default=0, ge=0, le=MAX_SEED)

    _known_style = field_validator("site_style")(known_style)

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if not all(4 <= n <= 1024 for n in v):
            raise ValueError(f"shape sides must be 4..1024, got {v}")
        return v


def style_spacing(style: str, shape: Shape = _DEFAULT_SHAPE) -> tuple[float, float, float]:
    """(sz, sy, sx) mm of ``style`` for ``shape`` (field of view fixed across shapes)."""
    st = STYLES[style]
    d, h, w = shape
    sz = st.spacing_z * _DEFAULT_SHAPE[0] / d
    return (round(sz, 6), round(st.spacing_xy * 96 / h, 6), round(st.spacing_xy * 96 / w, 6))


def style_shape(style: str, shape: Shape = _DEFAULT_SHAPE) -> Shape:
    """The volume shape of ``style``: ``shape`` with its in-plane sides scaled by ``fov``."""
    fov = STYLES[style].fov
    if fov == 1.0:
        return shape
    d, h, w = shape
    return (d, max(4, round(h * fov)), max(4, round(w * fov)))


def _grid(shape: Shape, spacing: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Physical (z, y, x) mm voxel-centre coordinates (origin at the centre), broadcastable."""
    axes = [
        (np.arange(n, dtype=np.float32) - (n - 1) / 2) * s
        for n, s in zip(shape, spacing, strict=True)
    ]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _smooth_noise(rng: np.random.Generator, shape: Shape, sigma: tuple[float, ...]) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit std, float32 of ``shape``."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return (field / max(float(field.std()), 1e-6)).astype(np.float32)


def _ellipsoid(
    grid: tuple[np.ndarray, ...],
    centre: np.ndarray,
    radii: np.ndarray,
    angle: float,
    rng: np.random.Generator,
    wobble: float,
) -> np.ndarray:
    """Boolean mask of a rotated ellipsoid with a low-frequency radial perturbation.

    Evaluated only inside its bounding box (fast); returns the full (D, H, W) mask.
    """
    amp, ph = rng.uniform(0, wobble, 3), rng.uniform(0, 2 * np.pi, 3)
    reach = float(radii.max()) * (1.0 + amp.sum()) + 1.0
    crop = tuple(_window(g.ravel(), c, reach) for g, c in zip(grid, centre, strict=True))
    z, y, x = (
        g[tuple(sl if k == i else slice(None) for k in range(3))] - np.float32(c)
        for i, (g, sl, c) in enumerate(zip(grid, crop, centre, strict=True))
    )
    ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    xr, yr = ca * x + sa * y, -sa * x + ca * y
    zn, yn, xn = z / np.float32(radii[0]), yr / np.float32(radii[1]), xr / np.float32(radii[2])
    rho = np.sqrt(zn**2 + yn**2 + xn**2)
    phi, psi = np.arctan2(yr, xr), np.arctan2(zn, np.hypot(yn, xn) + 1e-6)
    bump = amp[0] * np.cos(2 * phi + ph[0]) + amp[1] * np.cos(3 * phi + ph[1])
    out = np.zeros(tuple(g.size for g in grid), dtype=bool)
    out[crop] = rho < 1.0 + bump + amp[2] * np.cos(2 * psi + ph[2])
    return out


def _window(axis: np.ndarray, centre: float, reach: float) -> slice:
    """Index slice of the sorted coordinates ``axis`` within ``centre +- reach``."""
    lo, hi = np.searchsorted(axis, [centre - reach, centre + reach])
    return slice(int(lo), max(int(hi), int(lo) + 1))


def _organ(preset: str, grid: tuple[np.ndarray, ...], rng: np.random.Generator) -> np.ndarray:
    """The organ mask: central prostate, or a left-lateral spleen with a concave medial side."""
    if preset == "prostate":
        centre = np.array([rng.uniform(-3, 3), rng.normal(0, 2.5), rng.normal(0, 2.5)])
        radii = np.array([rng.uniform(11, 15), rng.uniform(10, 13), rng.uniform(12, 16)])
        return _ellipsoid(grid, centre, radii, rng.uniform(-0.5, 0.5), rng, 0.10)
    centre = np.array([rng.uniform(-3, 3), rng.uniform(1, 5), rng.uniform(8, 12)])
    radii = np.array([rng.uniform(10, 14), rng.uniform(9, 12), rng.uniform(5, 7)])
    organ = _ellipsoid(grid, centre, radii, rng.uniform(-0.9, -0.4), rng, 0.10)
    cut = centre + np.array([0.0, 0.0, -radii[2] * rng.uniform(1.2, 1.5)])
    return organ & ~_ellipsoid(grid, cut, radii * np.array([1.2, 0.8, 0.9]), 0.0, rng, 0.05)


def _blobs(grid: tuple[np.ndarray, ...], rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """``n`` distractor ellipsoids scattered around the centre."""
    out = []
    for _ in range(n):
        centre = np.array([rng.uniform(-15, 15), rng.uniform(-20, 20), rng.uniform(-20, 20)])
        radii = rng.uniform(3, 7, 3)
        out.append(_ellipsoid(grid, centre, radii, rng.uniform(0, np.pi), rng, 0.15))
    return out


def _body(grid: tuple[np.ndarray, ...], rng: np.random.Generator, scale: float) -> np.ndarray:
    """In-plane elliptic body outline (same on every slice), float mask in {0, 1}."""
    _, y, x = grid
    ay, ax = scale * rng.uniform(0.9, 1.0), scale * rng.uniform(1.2, 1.35)
    return (((y / ay) ** 2 + (x / ax) ** 2) < 1.0).astype(np.float32)


def _bias(grid: tuple[np.ndarray, ...], rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative bias field exp(strength * low-order polynomial), mean ~ 1."""
    z, y, x = (g / 30.0 for g in grid)
    c = rng.uniform(-1, 1, 5)
    return np.exp(strength * (c[0] * x + c[1] * y + c[2] * x * y + c[3] * z + c[4] * x * x))


def _mri_case(
    grid: tuple[np.ndarray, ...],
    organ: np.ndarray,
    st: SiteStyle,
    rng: np.random.Generator,
    vox: tuple[float, ...],
) -> np.ndarray:
    """Prostate-like T2 MRI intensities (arbitrary units, tissue ~ 1) with style applied."""
    shape: Shape = organ.shape  # type: ignore[assignment]
    img = 1.0 + 0.08 * _smooth_noise(rng, shape, tuple(2.0 / v for v in vox))
    for blob in _blobs(grid, rng, 4):
        img = np.where(blob, 1.0 + st.gap * rng.uniform(0.4, 1.1), img)
    soft = ndimage.gaussian_filter(organ.astype(np.float32), 0.7)
    inner = ndimage.binary_erosion(organ, iterations=2)
    organ_int = 1.0 + st.gap + 0.06 * _smooth_noise(rng, shape, tuple(1.0 / v for v in vox))
    organ_int = organ_int - 0.5 * st.gap * ndimage.gaussian_filter(inner.astype(np.float32), 1.5)
    img = (1 - soft) * img + soft * organ_int
    img = img * (0.1 + 0.9 * _body(grid, rng, 40.0))
    img = np.clip(img, 0, None) ** st.gamma * _bias(grid, rng, st.bias)
    n1, n2 = (rng.standard_normal(shape, dtype=np.float32) * st.noise for _ in range(2))
    return np.sqrt((img + n1) ** 2 + n2**2) * 400.0


def _ct_case(
    grid: tuple[np.ndarray, ...],
    organ: np.ndarray,
    st: SiteStyle,
    rng: np.random.Generator,
    vox: tuple[float, ...],
) -> np.ndarray:
    """Spleen-like CT in HU: air outside, fat ring, soft tissue at +30..60, organ ~ 45 + 100 |gap|.

    CT is calibrated in HU, so a style's contrast sign (an MRI weighting effect) is ignored.
    """
    shape: Shape = organ.shape  # type: ignore[assignment]
    gap = abs(st.gap)
    hu = 45.0 + 10.0 * _smooth_noise(rng, shape, tuple(2.0 / v for v in vox))
    for blob in _blobs(grid, rng, 4):
        hu = np.where(blob, 45.0 + 100 * gap * rng.uniform(0.5, 1.1), hu)
    fat = ndimage.binary_dilation(organ, iterations=2) & ~organ & (rng.random(shape) < 0.8)
    hu = np.where(ndimage.gaussian_filter(fat.astype(np.float32), 0.6) > 0.3, -90.0, hu)
    organ_hu = 45.0 + 100 * gap + 8.0 * _smooth_noise(rng, shape, tuple(1.0 / v for v in vox))
    soft = ndimage.gaussian_filter(organ.astype(np.float32), 0.7)
    hu = (1 - soft) * hu + soft * organ_hu
    outer, inner = _body(grid, rng, 44.0), _body(grid, rng, 38.0)
    hu = np.where(outer > 0, np.where(inner > 0, hu, -100.0), -1000.0)
    hu = (hu + 1000.0) * _bias(grid, rng, 0.1 * st.bias) - 1000.0
    return hu + 200.0 * st.noise * rng.standard_normal(shape, dtype=np.float32)


def _ct_storage(hu: np.ndarray, st: SiteStyle) -> np.ndarray:
    """Stored CT values: ``hu`` clipped to the style's window, plus its offset."""
    if st.hu_window is not None:
        hu = np.clip(hu, *st.hu_window)
    return hu + np.float32(st.hu_offset) if st.hu_offset else hu


def phantom_case(
    preset: str, style: str, shape: Shape, key: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One case: (image (D, H, W) float32, label (D, H, W) uint8, spacing (sz, sy, sx))."""
    rng = np.random.default_rng(list(key))
    spacing = style_spacing(style, shape)
    shape = style_shape(style, shape)
    grid = _grid(shape, spacing)
    organ = _organ(preset, grid, rng)
    make = _mri_case if preset == "prostate" else _ct_case
    img = make(grid, organ, STYLES[style], rng, spacing)
    if STYLES[style].blur > 0:
        img = ndimage.gaussian_filter(img, (0, STYLES[style].blur, STYLES[style].blur))
    if preset != "prostate":
        img = _ct_storage(img, STYLES[style])
    return img.astype(np.float32), organ.astype(np.uint8), spacing


def _as_shape(shape: Shape | list[int]) -> Shape:
    """Validate and normalise a (D, H, W) shape."""
    d, h, w = (int(n) for n in shape)
    if min(d, h, w) < 4:
        raise ValueError(f"phantom shape {tuple(shape)} too small (each dim >= 4)")
    return (d, h, w)


def _case_key(seed: int, preset: str, style: str, index: int, proxy: bool) -> tuple[int, ...]:
    """Seed sequence entropy for one case, unique per (seed, preset, style, index, proxy)."""
    return (seed, _PRESETS[preset][1], STYLE_KEYS[style], index, int(proxy))


def _write(
    out: Path,
    preset: str,
    cases: list[tuple[str, int]],
    shape: Shape,
    seed: int,
    proxy: bool,
    meta: dict[str, object],
) -> Path:
    """Generate and write ``cases`` [(style, index)] plus ``dataset.json``."""
    if preset not in _PRESETS:
        raise ValueError(f"unknown phantom preset {preset!r}; valid: {sorted(_PRESETS)}")
    training = []
    for i, (style, index) in enumerate(cases):
        img, lab, spacing = phantom_case(
            preset, style, shape, _case_key(seed, preset, style, index, proxy)
        )
        name = f"{preset}_{i:03d}.nii.gz"
        save_nifti(out / "imagesTr" / name, img, spacing, np.float32)
        save_nifti(out / "labelsTr" / name, lab, spacing, np.uint8)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    atomic_write_json(
        out / "dataset.json",
        {
            "name": out.name,
            "modality": {"0": _PRESETS[preset][0]},
            "labels": {"0": "background", "1": preset},
            "numTraining": len(training),
            "training": training,
            "phantom": {"preset": preset, "seed": seed, "shape": list(shape), **meta},
        },
    )
    return out


def make_phantom(
    out: Path,
    preset: str,
    site_style: str,
    n_cases: int = 12,
    seed: int = 0,
    shape: Shape = _DEFAULT_SHAPE,
) -> Path:
    """Write one single-style site dataset in MSD layout under ``out``; returns ``out``."""
    known_style(site_style)
    cases = [(site_style, i) for i in range(n_cases)]
    return _write(
        Path(out),
        preset,
        cases,
        _as_shape(shape),
        seed,
        False,
        {"style": site_style},
    )


def make_prostate_sites(
    out_root: Path,
    styles: tuple[str, ...] = ("A", "B", "C"),
    n_cases: int = 12,
    seed: int = 0,
    shape: Shape = _DEFAULT_SHAPE,
) -> dict[str, Path]:
    """One prostate site per style at ``out_root/site_<style lower>``; returns style -> path."""
    return {
        s: make_phantom(Path(out_root) / f"site_{s.lower()}", "prostate", s, n_cases, seed, shape)
        for s in styles
    }


def make_proxy(
    out: Path,
    preset: str = "prostate",
    n_cases: int = 12,
    seed: int = 0,
    shape: Shape = _DEFAULT_SHAPE,
    styles: tuple[str, ...] = ("A", "B", "C"),
) -> Path:
    """Public proxy dataset: cases cycle through ``styles``, seeds disjoint from the sites.

    The default mixes the stress styles A, B, C; a scenario whose proxy must be unlike every
    site passes its own proxy style, e.g. ``("PX",)``.
    """
    if not styles:
        raise ValueError("make_proxy: at least one style is required")
    for s in styles:
        known_style(s)
    cases = [(styles[i % len(styles)], i) for i in range(n_cases)]
    return _write(
        Path(out),
        preset,
        cases,
        _as_shape(shape),
        seed,
        True,
        {"style": "mixed" if len(set(styles)) > 1 else styles[0],
         "styles": [s for s, _ in cases]},
    )


def make_from_spec(out: Path, spec: PhantomSpec) -> Path:
    """:func:`make_phantom` driven by a :class:`PhantomSpec`."""
    return make_phantom(out, spec.preset, spec.site_style, spec.n_cases, spec.seed, spec.shape)
