"""Phantom site styles: the scanner signatures of :mod:`common.data.phantom`.

``A``, ``B``, ``C`` are the stress styles (B has inverted contrast, an MRI weighting that no
real T2 site shows). ``P1``-``P3`` are realistic prostate T2 scanners (no inverted contrast)
and ``PX`` a public prostate proxy unlike each of them; ``S1`` (Decathlon-like) and ``S2``
(Duke-like) are spleen CT sites and ``SX`` a public CT proxy unlike both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SiteStyle:
    """Scanner signature. Spacings in mm for the default shape; noise relative to tissue.

    ``fov``: in-plane field of view relative to ``spacing_xy * 96`` mm at the same spacing (the
    in-plane matrix is ``round(size * fov)``). ``hu_window``: CT values clipped to this HU range
    (a windowed export); ``hu_offset``: added to the stored CT values (e.g. +1024: stored
    without the rescale intercept). The defaults leave the image unchanged.
    """

    spacing_z: float
    spacing_xy: float
    bias: float
    noise: float
    gap: float
    gamma: float
    blur: float
    fov: float = 1.0
    hu_window: tuple[float, float] | None = None
    hu_offset: float = 0.0


STYLES: dict[str, SiteStyle] = {
    "A": SiteStyle(
        spacing_z=3.0, spacing_xy=0.6, bias=0.20, noise=0.05, gap=0.30, gamma=1.0, blur=0.5
    ),
    "B": SiteStyle(
        spacing_z=1.5, spacing_xy=0.8, bias=0.35, noise=0.06, gap=-0.40, gamma=0.7, blur=0.0
    ),
    "C": SiteStyle(
        spacing_z=4.0, spacing_xy=0.5, bias=0.06, noise=0.025, gap=0.45, gamma=1.6, blur=0.8
    ),
    # Prostate T2 sites (append new styles at the end: a style's position keys its cases).
    # P1: 3 T with a surface/endorectal coil: strong bias, low noise, fine in-plane, small FOV.
    "P1": SiteStyle(
        spacing_z=3.0, spacing_xy=0.5, bias=0.45, noise=0.03, gap=0.35, gamma=1.0, blur=0.3,
        fov=0.9,
    ),
    # P2: 1.5 T body coil: mild bias, noisy, coarse in-plane, thick slices, large FOV.
    "P2": SiteStyle(
        spacing_z=4.0, spacing_xy=0.75, bias=0.12, noise=0.08, gap=0.30, gamma=0.8, blur=0.6,
        fov=1.25,
    ),
    # P3: 3D T2 (thin slices), moderate bias and noise, higher gamma contrast.
    "P3": SiteStyle(
        spacing_z=1.5, spacing_xy=0.6, bias=0.25, noise=0.05, gap=0.45, gamma=1.4, blur=0.0,
        fov=1.0,
    ),
    # PX: public prostate proxy, unlike P1-P3 in slice thickness, FOV, noise, bias and gamma.
    "PX": SiteStyle(
        spacing_z=2.5, spacing_xy=0.65, bias=0.05, noise=0.04, gap=0.25, gamma=1.15, blur=0.2,
        fov=1.1,
    ),
    # Spleen CT. S1 (Decathlon-like): 5 mm slices, soft kernel, true HU.
    "S1": SiteStyle(
        spacing_z=5.0, spacing_xy=0.8, bias=0.10, noise=0.05, gap=0.50, gamma=1.0, blur=0.8,
    ),
    # S2 (Duke-like): thin slices, sharp noisy kernel, stored windowed [-160, 240] HU + 1024.
    "S2": SiteStyle(
        spacing_z=2.0, spacing_xy=0.7, bias=0.10, noise=0.12, gap=0.40, gamma=1.0, blur=0.0,
        hu_window=(-160.0, 240.0), hu_offset=1024.0,
    ),
    # SX: public CT proxy: 3 mm slices, medium kernel, weaker enhancement, wider FOV.
    "SX": SiteStyle(
        spacing_z=3.0, spacing_xy=0.9, bias=0.10, noise=0.08, gap=0.35, gamma=1.0, blur=0.4,
        fov=1.15,
    ),
}
#: Each style's index in the case keys (A, B, C -> 0, 1, 2 as before; new styles go last).
STYLE_KEYS = {name: i for i, name in enumerate(STYLES)}


def known_style(name: str) -> str:
    """``name`` if it is a key of :data:`STYLES`, else a ValueError listing the valid ones."""
    if name not in STYLES:
        raise ValueError(f"unknown site style {name!r}; valid: {', '.join(STYLES)}")
    return name
