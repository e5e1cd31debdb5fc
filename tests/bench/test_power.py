"""bench/power.py: variance components, cases needed and the detectable difference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.power import (
    case_sd_from_ci,
    cases_needed,
    components,
    detectable,
    kd_pair,
    measured,
    per_case_sources,
    same_grid,
    seeds_needed,
)

Z = 1.959963984540054 + 0.8416212335729143


def test_components_split_seed_and_case_variance() -> None:
    # d[r, c] = seed effect + case effect, no interaction: exact recovery
    seed, case = np.array([[0.0], [0.02]]), np.array([[0.1, -0.1, 0.0, 0.0]])
    comp = components(seed + case)
    assert comp["resid_sd"] == pytest.approx(0.0, abs=1e-12)
    assert comp["seed_sd"] == pytest.approx(math.sqrt(0.0002))  # var of (0, 0.02), ddof 1
    assert comp["case_sd"] == pytest.approx(math.sqrt(0.02 / 3))  # var of (.1, -.1, 0, 0)
    assert comp["case_effect_sd"] == pytest.approx(math.sqrt(0.02 / 3))  # no residual
    one = components(np.array([[0.1, -0.1, 0.0, 0.0]]))
    assert one == {"case_sd": pytest.approx(math.sqrt(0.02 / 3)), "seeds": 1, "cases": 4}


def test_case_sd_from_a_bootstrap_ci() -> None:
    # SE = half-width 0.0196 / 1.96 = 0.01; sd = 0.01 * sqrt(9) * sqrt(9 / 8)
    assert case_sd_from_ci(-0.0196, 0.0196, 9) == pytest.approx(0.03 * math.sqrt(9 / 8),
                                                                rel=1e-4)


def test_cases_needed_and_detectable_agree() -> None:
    z = 1.959963984540054 + 0.8416212335729143
    # no seed variance: the test's count, (z * 0.07 / 0.02)^2 * pi / 3 = 100.7 -> 101
    assert cases_needed(0.07, 0.0, 3, 0.02, 0.05, 0.8) == math.ceil((z * 3.5) ** 2 * math.pi / 3)
    # seeds bound the CI: seed_sd^2 / R >= (delta / z)^2 -> no number of cases suffices
    assert cases_needed(0.07, 0.03, 5, 0.02, 0.05, 0.8) is None
    c = cases_needed(0.07, 0.02, 32, 0.02, 0.05, 0.8)
    assert c is not None and detectable(0.07, 0.02, 32, c, 0.05, 0.8) <= 0.02
    assert detectable(0.07, 0.02, 32, c - 1, 0.05, 0.8) > 0.02


def test_same_grid_pairs() -> None:
    assert same_grid("64px_median_exclude/student_only - 64px_median_augment_kd/student_only")
    assert not same_grid("256px_fill_exclude/m - 256px_median_exclude/m")
    assert same_grid("feature_taps decoder - emkd")


def test_components_residual_is_the_seed_by_case_interaction() -> None:
    # d = [[+e, -e], [-e, +e]]: no seed or case effect, all variance is interaction
    e = 0.05
    comp = components(np.array([[e, -e], [-e, e]]))
    assert comp["seed_sd"] == pytest.approx(0.0, abs=1e-12)
    assert comp["case_effect_sd"] == pytest.approx(0.0, abs=1e-12)
    # ms_res = sum(resid^2) / ((R-1)(C-1)) = 4 e^2
    assert comp["resid_sd"] == pytest.approx(2 * e)


def test_residual_noise_shrinks_with_seeds() -> None:
    # only seed x case noise (sd 0.1), 4 seeds, 25 cases: a case's mean over seeds has sd 0.05,
    # so the test bounds the design: z * 0.05 / sqrt(25 * 3 / pi)
    det = detectable(0.0, 0.0, 4, 25, 0.05, 0.8, resid_sd=0.1)
    assert det == pytest.approx(Z * 0.05 / math.sqrt(25 * 3 / math.pi))
    assert detectable(0.0, 0.0, 16, 25, 0.05, 0.8, resid_sd=0.1) == pytest.approx(det / 2)
    # with the residual lumped into the case sd (resid 0) the same design needs 4x the cases
    assert cases_needed(0.1, 0.0, 4, det, 0.05, 0.8) == pytest.approx(
        4 * cases_needed(0.0, 0.0, 4, det, 0.05, 0.8, resid_sd=0.1), abs=4)


def test_seeds_needed_when_the_seed_effect_dominates() -> None:
    # seed sd 0.05, no case noise: the CI needs z * 0.05 / sqrt(R) <= 0.02 -> R >= 49.05 -> 50
    assert (Z * 0.05 / 0.02) ** 2 == pytest.approx(49.05, abs=0.01)
    assert seeds_needed(0.0, 0.05, 162, 0.02, 0.05, 0.8) == 50
    assert seeds_needed(0.0, 0.05, 162, 0.02, 0.05, 0.8, most=49) is None


def test_kd_pairs_are_no_kd_and_multi_rows_of_the_same_student() -> None:
    base = {"run": "multi_inverse_dice_loss", "student": "enet"}
    assert kd_pair(base, {"run": "student_only", "student": "enet"})
    assert kd_pair(base, {"run": "multi_equal", "student": "enet"})
    assert not kd_pair(base, {"run": "multi_mtkd_espnet", "student": "espnet"})
    assert not kd_pair(base, {"run": "pooled", "student": "enet"})
    assert not kd_pair(base, {"run": "single_site_a", "student": "enet"})


def _row(run: str, scores: list[list[float]], student: str = "enet") -> dict:
    return {"run": run, "student": student, "seed_cases": {
        str(r): {"site_a": {f"case{c:03d}": {"dice": v, "voe": 1 - v, "hd95": 1.0}
                            for c, v in enumerate(vals)}}
        for r, vals in enumerate(scores)}}


def test_measured_components_from_a_gzipped_results_page(tmp_path) -> None:
    import gzip
    import json

    # default - equal: seed effect (+0.1, -0.1, 0) on 4 cases with no case effect or residual
    base = [[0.6] * 4, [0.5] * 4, [0.7] * 4]
    other = [[0.5] * 4, [0.6] * 4, [0.7] * 4]
    rows = [_row("multi_inverse_dice_loss", base), _row("multi_equal", other),
            _row("multi_mtkd_espnet", other, student="espnet")]
    path = tmp_path / "x_results.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"version": 1, "rows": rows}).encode()))
    entries = per_case_sources([path])
    assert [e["kd_pair"] for e in entries] == [True, False]
    got = measured(entries)[str(path)]
    assert got["seeds"] == 3 and got["cases"] == 4
    assert got["seed_sd"] == pytest.approx(0.1)  # sd of (0.1, -0.1, 0.0)
    assert got["case_effect_sd"] == pytest.approx(0.0, abs=1e-9)
    assert got["resid_sd"] == pytest.approx(0.0, abs=1e-9)
