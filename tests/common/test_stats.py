"""Paired comparisons (common/stats.py): hand-computable differences, CIs and p-values."""

from __future__ import annotations

import numpy as np
import pytest

from common.stats import align_scores, bootstrap_ci, compare_paired, paired_p_value


def _scores(seeds: int = 3, cases: int = 6) -> np.ndarray:
    return np.random.default_rng(0).uniform(0.5, 0.9, size=(seeds, cases))


def test_identical_rows_give_zero_difference_and_p_one() -> None:
    a = _scores()
    c = compare_paired(a, a.copy())
    assert (c.mean_diff, c.ci_low, c.ci_high, c.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not c.significant() and (c.n_seeds, c.n_cases) == (3, 6)
    assert compare_paired(a, a.copy(), test="t").p_value == 1.0


def test_constant_shift_ci_excludes_zero() -> None:
    b = _scores()
    c = compare_paired(b + 0.1, b)
    assert c.mean_diff == pytest.approx(0.1)
    assert c.ci_low == pytest.approx(0.1) and c.ci_high == pytest.approx(0.1)
    assert c.p_value == pytest.approx(2 / 2**6)  # exact signed rank: all 6 cases positive
    assert c.significant()
    assert compare_paired(b + 0.1, b, test="t").p_value == 0.0  # zero variance, t infinite


def test_bootstrap_of_two_cases_by_hand() -> None:
    # one seed, differences (0, 1): a replicate mean is 0, 0.5 or 1 with p 1/4, 1/2, 1/4
    assert bootstrap_ci(np.array([[0.0, 1.0]])) == (0.0, 1.0)
    # same over two seeds x one case
    assert bootstrap_ci(np.array([[0.0], [1.0]])) == (0.0, 1.0)


def test_bootstrap_is_seeded() -> None:
    d = _scores() - 0.7
    assert bootstrap_ci(d, seed=1) == bootstrap_ci(d, seed=1)
    assert bootstrap_ci(d, seed=1) != bootstrap_ci(d, seed=2)
    lo, hi = bootstrap_ci(d)
    assert lo < d.mean() < hi


def test_wilcoxon_on_case_means_by_hand() -> None:
    b = np.zeros((2, 6))
    mixed = np.array([0.1, -0.2, 0.3, 0.4, -0.5, 0.6])
    # seed rows differ, their mean per case is ``mixed``: the test uses 6 pairs, not 12
    a = np.stack([mixed - 0.05, mixed + 0.05])
    # ranks of |d| are 1..6; negatives hold ranks 2 + 5 = 7; P(W <= 7) = 18/64 -> p = 0.5625
    assert paired_p_value(a - b) == pytest.approx(0.5625)
    c = compare_paired(a, b)
    assert c.mean_diff == pytest.approx(0.7 / 6) and c.ci_low < 0 < c.ci_high
    assert not c.significant()


def test_rank_test_and_ci_must_agree() -> None:
    # 19 cases +0.01 and one -1.0: the signed-rank test says "a better" (W- = 20 of 210,
    # p < 0.01) while the mean difference is (0.19 - 1) / 20 = -0.0405 and its CI spans 0
    d = np.array([[0.01] * 19 + [-1.0]])
    c = compare_paired(d, np.zeros_like(d))
    assert c.p_value < 0.01 and c.mean_diff == pytest.approx(-0.0405)
    assert c.ci_low < 0 < c.ci_high
    assert not c.significant()


def test_paired_t_equals_scipy_paired_t() -> None:
    from scipy.stats import ttest_rel

    a, b = _scores(), _scores()[:, ::-1]
    expected = ttest_rel(a.mean(0), b.mean(0)).pvalue
    assert compare_paired(a, b, test="t").p_value == pytest.approx(expected)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="shapes"):
        compare_paired(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="finite"):
        compare_paired(np.array([[np.nan]]), np.zeros((1, 1)))
    with pytest.raises(ValueError, match="unknown paired test"):
        paired_p_value(np.ones((1, 3)), test="sign")


def test_align_scores_keeps_common_seeds_and_finite_cases() -> None:
    a = {"3": {"x": 0.5, "y": 0.6, "z": 0.1}, "4": {"x": 0.7, "y": float("nan"), "z": 0.2},
         "5": {"x": 0.0}}
    b = {"3": {"x": 0.4, "y": 0.6, "z": 0.3}, "4": {"x": 0.6, "y": 0.1, "z": 0.2}}
    ma, mb, seeds, cases = align_scores(a, b)
    assert seeds == ["3", "4"] and cases == ["x", "z"]  # y has a NaN in seed 4
    np.testing.assert_array_equal(ma, [[0.5, 0.1], [0.7, 0.2]])
    np.testing.assert_array_equal(mb, [[0.4, 0.3], [0.6, 0.2]])
