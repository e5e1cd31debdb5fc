"""Hand-computed checks of Dice / VOE / HD95 and the volume accumulator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.metrics import (
    SegScores,
    VolumeAccumulator,
    dice,
    hd95,
    score_slices,
    score_volume,
    summarise,
    voe,
    voe_paper,
)

PRED = np.array([[1, 1], [0, 0]])
GT = np.array([[1, 0], [0, 0]])


def test_overlap_metrics_hand_computed() -> None:
    # |P|=2, |G|=1, |P∩G|=1, |P∪G|=2
    assert dice(PRED, GT) == pytest.approx(2 / 3)
    assert voe(PRED, GT) == pytest.approx(1 / 2)
    assert voe_paper(PRED, GT) == pytest.approx(1 - 1 / 3)


def test_overlap_3x3_bool_and_perfect() -> None:
    pred = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 0]], dtype=bool)
    gt = np.array([[0, 1, 1], [0, 1, 1], [0, 0, 0]], dtype=bool)
    # |P|=4, |G|=4, inter=3, union=5
    assert dice(pred, gt) == pytest.approx(6 / 8)
    assert voe(pred, gt) == pytest.approx(1 - 3 / 5)
    assert voe(gt, gt) == 0.0 and dice(gt, gt) == 1.0
    assert voe_paper(gt, gt) == pytest.approx(0.5)  # the paper form's known flaw


def test_empty_conventions() -> None:
    empty = np.zeros((3, 3), dtype=int)
    one = np.zeros((3, 3), dtype=int)
    one[1, 1] = 1
    assert dice(empty, empty) == 1.0 and voe(empty, empty) == 0.0
    assert hd95(empty, empty, (1.0, 1.0)) == 0.0
    assert dice(one, empty) == 0.0 and voe(empty, one) == 1.0
    assert math.isnan(hd95(one, empty, (1.0, 1.0)))
    assert math.isnan(hd95(empty, one, (1.0, 1.0)))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError):
        hd95(PRED, GT, (1.0,))


def test_hd95_points_anisotropic() -> None:
    pred = np.array([1, 0, 0, 0])
    gt = np.array([0, 0, 0, 1])
    assert hd95(pred, gt, (2.0,)) == pytest.approx(6.0)  # 3 voxels * 2 mm
    p2 = np.zeros((3, 5), dtype=bool)
    g2 = np.zeros((3, 5), dtype=bool)
    p2[0, 0] = True
    g2[1, 3] = True
    # dy = 1 voxel * 2 mm, dx = 3 voxels * 1 mm -> sqrt(4 + 9)
    assert hd95(p2, g2, (2.0, 1.0)) == pytest.approx(math.sqrt(13.0))


def test_hd95_percentile_of_pooled_distances() -> None:
    # 1-D, spacing 1: pred {0, 1}, gt {0}; surfaces are the voxels themselves.
    # pred->gt distances {0, 1}; gt->pred {0}; pooled [0, 0, 1] -> 95th pct = 0.9
    pred = np.array([1, 1, 0, 0, 0])
    gt = np.array([1, 0, 0, 0, 0])
    assert hd95(pred, gt, (1.0,)) == pytest.approx(np.percentile([0.0, 0.0, 1.0], 95))
    assert hd95(pred, pred, (1.0,)) == 0.0


def test_hd95_uses_surface_only_3d() -> None:
    cube = np.zeros((5, 5, 5), dtype=bool)
    cube[1:4, 1:4, 1:4] = True
    assert hd95(cube, cube, (3.0, 1.0, 1.0)) == 0.0
    shifted = np.roll(cube, 1, axis=0)
    # every surface voxel is within one z step (3 mm) of the other surface, some are at 0
    assert 0.0 < hd95(cube, shifted, (3.0, 1.0, 1.0)) <= 3.0


def test_score_volume_and_slices() -> None:
    pred = np.stack([PRED, np.zeros((2, 2), int)])
    gt = np.stack([GT, np.zeros((2, 2), int)])
    sl = score_slices(pred, gt, (5.0, 1.0, 1.0))
    assert sl[0].dice == pytest.approx(2 / 3) and sl[1] == SegScores(1.0, 0.0, 0.0)
    # in-plane: pred surface {(0,0),(0,1)}, gt {(0,0)}: distances [0, 1, 0]
    assert sl[0].hd95 == pytest.approx(np.percentile([0.0, 1.0, 0.0], 95))
    vol = score_volume(pred, gt, (5.0, 1.0, 1.0))
    assert vol.dice == pytest.approx(2 / 3) and vol.voe == pytest.approx(0.5)


def test_volume_accumulator_reorders_slices() -> None:
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 2, size=(4, 3, 3))
    gt = rng.integers(0, 2, size=(4, 3, 3))
    acc = VolumeAccumulator()
    for z in (2, 0, 3, 1):
        acc.add("caseA", z, pred[z], gt[z])
    acc.add("caseB", 0, PRED, GT)
    p, g = acc.volume("caseA")
    np.testing.assert_array_equal(p, pred.astype(bool))
    np.testing.assert_array_equal(g, gt.astype(bool))
    spacing = (2.0, 1.0, 1.0)
    scores = acc.scores({"caseA": spacing, "caseB": (1.0, 1.0, 1.0)})
    assert scores["caseA"] == score_volume(pred, gt, spacing)
    assert scores["caseB"].dice == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        acc.add("caseA", 2, pred[2], gt[2])
    with pytest.raises(KeyError):
        acc.scores({"caseA": spacing})


def test_summarise_counts_undefined_hd95() -> None:
    scores = {
        "a": SegScores(1.0, 0.0, 2.0),
        "b": SegScores(0.5, 0.5, 4.0),
        "c": SegScores(0.0, 1.0, float("nan")),
    }
    s = summarise(scores)
    assert s["dice_mean"] == pytest.approx(0.5)
    assert s["dice_std"] == pytest.approx(np.std([1.0, 0.5, 0.0]))
    assert s["hd95_mean"] == pytest.approx(3.0) and s["hd95_std"] == pytest.approx(1.0)
    assert s["hd95_undefined"] == 1 and s["n"] == 3


@pytest.mark.parametrize(("spacing", "match"), [
    ((1.0, 1.0, 1.0), "3 entries for a 2-D mask"),
    ((0.0, 1.0), "finite and > 0"),
    ((-0.5, 1.0), "finite and > 0"),
    ((float("nan"), 1.0), "finite and > 0"),
    ((float("inf"), 1.0), "finite and > 0"),
    ("ab", "not a sequence of numbers"),
])
def test_spacing_is_validated(spacing: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hd95(PRED, GT, spacing)
    with pytest.raises(ValueError, match=match):
        score_volume(PRED, GT, spacing)  # checked before Dice / VOE are computed


def test_hd95_matches_medpy_on_an_anisotropic_case() -> None:
    """Pooled directed surface distances, 95th percentile: medpy's hd95 convention."""
    binary = pytest.importorskip("medpy.metric.binary")
    zz, yy, xx = np.mgrid[:6, :40, :36]
    gt = ((yy - 20) / 12.0) ** 2 + ((xx - 17) / 9.0) ** 2 + ((zz - 2.5) / 2.4) ** 2 < 1
    pred = ((yy - 22) / 11.0) ** 2 + ((xx - 16) / 10.0) ** 2 + ((zz - 3) / 2.6) ** 2 < 1
    spacing = (3.0, 0.27, 0.5)
    ours = hd95(pred, gt, spacing)
    assert ours == pytest.approx(binary.hd95(pred, gt, voxelspacing=spacing), rel=1e-12)
    assert ours != pytest.approx(hd95(pred, gt, spacing[::-1]))  # (x, y, z) order differs
