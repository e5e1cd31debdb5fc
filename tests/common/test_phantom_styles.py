"""Realistic phantom site styles (P1-P3, PX, S1, S2, SX): deterministic, each differing in the
property it claims; the stress styles A, B, C unchanged bit for bit."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from common.data import phantom
from common.data.phantom import (
    STYLES,
    PhantomSpec,
    make_proxy,
    phantom_case,
    style_shape,
    style_spacing,
)

SMALL = (8, 32, 32)
# sha256 of image + label + spacing of phantom_case(preset, style, SMALL, key(seed 3, case 1,
# site)) computed before the realistic styles were added: A, B, C must not change.
ABC_HASHES = {
    "prostate/A": "e1f28e59d8887de977bf704a57cb83ed9ad47ce9c996b1e33b0c91c50196cc57",
    "prostate/B": "0653a96322bca407e51124596816c4a6876ad1e1af1c94472c8548499baf840a",
    "prostate/C": "1bc44c4a30d51558fc1fe9379f1af30a2a262d8ae1819283d2dccd29859ba913",
    "spleen/A": "9aa0a5d3d7ae5d23135c3df087a2ce02e2974bf4f5a03e940c07832de33d0229",
    "spleen/B": "9efbac887f04e3364d007914bb82548d544ffdb8c26113023609412e3eb03c0f",
    "spleen/C": "8f1fb605a86a10acc69ad4cc09ad1e77686cdde54d18ecfe16f67b8bd2ad5a6c",
    "prostate/A/proxy": "5409f8da642fdc1cd1646b33a2808e0329520a8ec71b318e3b30b39f1cf7be0d",
}


def _case(preset: str, style: str, shape: tuple[int, int, int] = SMALL, proxy: bool = False
          ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    return phantom_case(preset, style, shape, phantom._case_key(3, preset, style, 1, proxy))


@pytest.mark.parametrize("name", sorted(ABC_HASHES))
def test_stress_styles_are_bit_identical(name: str) -> None:
    preset, style, *proxy = name.split("/")
    img, lab, sp = _case(preset, style, proxy=bool(proxy))
    digest = hashlib.sha256(img.tobytes() + lab.tobytes() + repr(sp).encode()).hexdigest()
    assert digest == ABC_HASHES[name]


@pytest.mark.parametrize("preset,style", [("prostate", s) for s in ("P1", "P2", "P3", "PX")]
                         + [("spleen", s) for s in ("S1", "S2", "SX")])
def test_new_styles_are_deterministic_and_distinct(preset: str, style: str) -> None:
    a, la, _ = _case(preset, style)
    b, lb, _ = _case(preset, style)
    assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()
    ref = _case(preset, "A")[0]  # the same case key under style A
    assert a.shape != ref.shape or not np.array_equal(a, ref)


def test_prostate_sites_differ_in_slice_thickness_resolution_and_fov() -> None:
    shape = (24, 96, 96)
    assert [style_spacing(s, shape) for s in ("P1", "P2", "P3", "PX")] == [
        (3.0, 0.5, 0.5), (4.0, 0.75, 0.75), (1.5, 0.6, 0.6), (2.5, 0.65, 0.65)]
    # in-plane matrix = round(96 * fov): FOV 0.5 * 86 = 43 mm, 0.75 * 120 = 90 mm, 57.6 mm
    assert [style_shape(s, shape) for s in ("P1", "P2", "P3", "PX")] == [
        (24, 86, 86), (24, 120, 120), (24, 96, 96), (24, 106, 106)]
    assert _case("prostate", "P2", shape)[0].shape == (24, 120, 120)
    assert [STYLES[s].bias for s in ("P1", "P2", "P3")] == [0.45, 0.12, 0.25]
    assert [STYLES[s].gamma for s in ("P1", "P2", "P3")] == [1.0, 0.8, 1.4]


def _noise_only(monkeypatch: pytest.MonkeyPatch, preset: str, style: str) -> np.ndarray:
    """The style's image minus the same case rendered with noise 0 (same random draws)."""
    img, _, _ = _case(preset, style, (12, 64, 64))
    monkeypatch.setitem(STYLES, style, dataclasses.replace(STYLES[style], noise=0.0))
    clean, _, _ = _case(preset, style, (12, 64, 64))
    return img - clean


def test_noise_levels_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [STYLES[s].noise for s in ("P1", "P2", "P3")] == [0.03, 0.08, 0.05]
    # CT S2 (sharp kernel: no blur): additive 200 * 0.12 = 24 HU; away from the window's edges
    d = _noise_only(monkeypatch, "spleen", "S2")
    assert float(d[np.abs(d) < 60].std()) == pytest.approx(24.0, rel=0.08)
    # MRI P3 (no blur): Rician magnitude of sd 0.05 on tissue ~1, x400 -> about 20
    d = _noise_only(monkeypatch, "prostate", "P3")
    assert float(d.std()) == pytest.approx(20.0, rel=0.15)


def test_ct_sites_differ_in_hu_storage() -> None:
    s1, l1, sp1 = _case("spleen", "S1", (24, 96, 96))
    s2, l2, sp2 = _case("spleen", "S2", (24, 96, 96))
    assert (sp1[0], sp2[0]) == (5.0, 2.0)  # slice thickness
    assert s1.min() < -900  # true HU, air outside the body
    assert s2.min() >= 864.0 and s2.max() <= 1264.0  # window [-160, 240] HU stored + 1024
    assert 40 < float(np.median(s2[l2 > 0])) - 1024 < 150  # enhanced spleen, after the offset
    assert (STYLES["S1"].blur, STYLES["S2"].blur) == (0.8, 0.0)  # soft vs sharp kernel


@pytest.mark.parametrize("style", ["P1", "P2", "P3", "PX"])
def test_realistic_prostate_contrast_is_not_inverted(style: str) -> None:
    img, lab, _ = _case("prostate", style, (24, 96, 96))
    from scipy import ndimage

    ring = ndimage.binary_dilation(lab > 0, iterations=3) & ~(lab > 0)
    assert float(np.median(img[lab > 0])) > float(np.median(img[ring]))


def test_proxy_style_unlike_every_site(tmp_path: Path) -> None:
    root = make_proxy(tmp_path / "px", n_cases=2, seed=7, shape=SMALL, styles=("PX",))
    meta = json.loads((root / "dataset.json").read_text())["phantom"]
    assert meta["style"] == "PX" and meta["styles"] == ["PX", "PX"]
    fields = ("spacing_z", "fov", "noise", "bias", "gamma")
    for site in ("P1", "P2", "P3"):
        assert all(getattr(STYLES["PX"], f) != getattr(STYLES[site], f) for f in fields)
    for site in ("S1", "S2"):
        assert all(getattr(STYLES["SX"], f) != getattr(STYLES[site], f)
                   for f in ("spacing_z", "noise", "blur"))
    with pytest.raises(ValueError, match="unknown site style 'Q'; valid: A, B, C, P1"):
        make_proxy(tmp_path / "q", styles=("Q",))
    with pytest.raises(ValueError, match="unknown site style 'Q'"):
        PhantomSpec(site_style="Q")


def test_make_proxy_cli_style_and_preset(tmp_path: Path) -> None:
    from coordinator.cli import main as coordinator_main

    out = tmp_path / "sx"
    assert coordinator_main(["make-proxy", "--out", str(out), "--cases", "1", "--depth", "4",
                             "--size", "16", "--preset", "spleen", "--style", "SX"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["modality"] == {"0": "CT"} and meta["phantom"]["style"] == "SX"
    assert coordinator_main(["make-proxy", "--out", str(tmp_path / "b"), "--style", "A,Z"]) == 2
