"""bench/power.py: variance components, cases needed and the detectable difference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.power import case_sd_from_ci, cases_needed, components, detectable, same_grid


def test_components_split_seed_and_case_variance() -> None:
    # d[r, c] = seed effect + case effect, no interaction: exact recovery
    seed, case = np.array([[0.0], [0.02]]), np.array([[0.1, -0.1, 0.0, 0.0]])
    comp = components(seed + case)
    assert comp["resid_sd"] == pytest.approx(0.0, abs=1e-12)
    assert comp["seed_sd"] == pytest.approx(math.sqrt(0.0002))  # var of (0, 0.02), ddof 1
    assert comp["case_sd"] == pytest.approx(math.sqrt(0.02 / 3))  # var of (.1, -.1, 0, 0)
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
