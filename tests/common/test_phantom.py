"""Synthetic multi-site phantoms: layout, determinism, organ extent, style differences."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from common.data.layout import discover_dataset
from common.data.nifti import load_nifti
from common.data.phantom import STYLES, make_phantom, make_prostate_sites, make_proxy
from common.data.slices import load_volumes

SHAPE = (12, 64, 64)


def _arrays(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    info = discover_dataset(root)
    out = []
    for c in info.cases:
        assert c.label is not None
        out.append((load_nifti(c.image)[0], load_nifti(c.label)[0]))
    return out


def test_layout_and_dataset_json(tmp_path: Path) -> None:
    root = make_phantom(tmp_path / "spl", "spleen", "B", n_cases=4, seed=5, shape=SHAPE)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "CT"} and meta["labels"]["1"] == "spleen"
    assert meta["numTraining"] == 4 and meta["phantom"]["style"] == "B"
    assert meta["phantom"]["seed"] == 5
    info = discover_dataset(root)
    assert info.modality == "CT" and len(info.cases) == 4
    assert (root / "imagesTr" / "spleen_003.nii.gz").is_file()
    img, lab = _arrays(root)[0]
    assert img.shape == SHAPE and img.min() < -900  # air outside the body
    organ_hu = float(np.median(img[lab > 0]))
    assert 40 < organ_hu < 110


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a = _arrays(make_phantom(tmp_path / "a", "prostate", "A", 4, seed=1, shape=SHAPE))
    b = _arrays(make_phantom(tmp_path / "b", "prostate", "A", 4, seed=1, shape=SHAPE))
    c = _arrays(make_phantom(tmp_path / "c", "prostate", "A", 4, seed=2, shape=SHAPE))
    for (ia, la), (ib, lb) in zip(a, b, strict=True):
        assert ia.tobytes() == ib.tobytes() and la.tobytes() == lb.tobytes()
    assert all(ia.tobytes() != ic.tobytes() for (ia, _), (ic, _) in zip(a, c, strict=True))
    masks = [lab for _, lab in a]
    assert not np.array_equal(masks[0], masks[1])  # shape varies per case


def test_organ_extent_and_fraction(tmp_path: Path) -> None:
    for preset in ("prostate", "spleen"):
        for style in "ABC":
            root = make_phantom(tmp_path / f"{preset}{style}", preset, style, 4, shape=SHAPE)
            for _img, lab in _arrays(root):
                per_slice = lab.reshape(SHAPE[0], -1).any(axis=1)
                assert 2 <= per_slice.sum() < SHAPE[0]
                idx = np.flatnonzero(per_slice)
                assert idx[-1] - idx[0] + 1 == idx.size  # contiguous range
                assert not per_slice[0] and not per_slice[-1]
                on = lab[idx]
                assert 0.01 < on.mean() < 0.35
                assert set(np.unique(lab)) == {0.0, 1.0}


def test_styles_differ(tmp_path: Path) -> None:
    sites = make_prostate_sites(tmp_path, n_cases=3, seed=0, shape=(24, 96, 96))
    assert set(sites) == {"A", "B", "C"} and sites["B"].name == "site_b"
    noise = {}
    for style, root in sites.items():
        info = discover_dataset(root)
        img, spacing = load_nifti(info.cases[0].image)
        assert spacing == (
            STYLES[style].spacing_z,
            STYLES[style].spacing_xy,
            STYLES[style].spacing_xy,
        )
        patch = img[:, 40:56, 4:12]  # tissue away from the organ
        noise[style] = float(np.std(np.diff(patch, axis=2)) / np.mean(patch))
    assert noise["B"] > 1.3 * noise["A"] > 1.3 * noise["C"]
    info = discover_dataset(sites["A"])
    vol = load_volumes(info, None, 64)[0]
    assert vol.spacing == pytest.approx((3.0, 0.9, 0.9))


def test_proxy_mixes_styles(tmp_path: Path) -> None:
    root = make_proxy(tmp_path / "proxy", n_cases=6, seed=0, shape=SHAPE)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["phantom"]["styles"] == ["A", "B", "C", "A", "B", "C"]
    spacings = {load_nifti(c.image)[1][0] for c in discover_dataset(root).cases}
    assert len(spacings) == 3
    site = _arrays(make_phantom(tmp_path / "site", "prostate", "A", 1, seed=0, shape=SHAPE))
    assert site[0][0].tobytes() != _arrays(root)[0][0].tobytes()


def test_generation_is_fast(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    make_phantom(tmp_path / "fast", "prostate", "B", n_cases=12, shape=(24, 96, 96))
    assert time.perf_counter() - t0 < 6.0  # budget is 3 s on an idle core; slack for CI
