"""Paired comparison of two models scored on the same test cases with the same seeds.

Two students ``a`` and ``b`` trained with the same seeds and scored on the same test cases
give two ``(R, C)`` score matrices (R seeds x C cases). Their comparison reports:

* the **mean paired difference** ``mean(a - b)`` over all R x C pairs;
* a **95 % percentile-bootstrap confidence interval** of that mean, resampling seeds and cases
  independently (a crossed bootstrap: each replicate draws R seeds and C cases with
  replacement and averages the differences on the drawn grid), seeded so it is reproducible;
* a **paired test** (two-sided) on the per-case differences averaged over seeds: the C test
  cases are the independent units (the R seeds of one case are not), so the test has C pairs.
  ``"wilcoxon"`` is scipy's signed-rank test (exact for small C), ``"t"`` the one-sample t test
  of the differences (paired t). All-zero differences give ``p = 1``.

numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
TESTS = ("wilcoxon", "t")


@dataclass(frozen=True)
class PairedComparison:
    """``a - b`` over R seeds x C cases: mean, bootstrap CI, paired-test p-value."""

    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    n_seeds: int
    n_cases: int

    def significant(self, alpha: float = ALPHA) -> bool:
        """``p < alpha`` (two-sided) AND the bootstrap CI excludes 0.

        The rank test and the CI of the mean can disagree (a few large differences against
        many small ones of the other sign); a difference is called only when both agree.
        """
        return self.p_value < alpha and (self.ci_low > 0.0 or self.ci_high < 0.0)


def paired_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` as float64 ``(R, C)``; ``a`` and ``b`` are ``(R, C)`` (or ``(C,)``, one seed)
    finite score matrices of identical shape."""
    x, y = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if x.shape != y.shape or x.ndim != 2 or x.size == 0:
        raise ValueError(f"paired scores need equal non-empty (seeds, cases) shapes, "
                         f"got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired scores must be finite (drop undefined values first)")
    return x - y


def bootstrap_ci(diff: np.ndarray, n_boot: int = 10000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile CI of ``diff.mean()`` for ``diff (R, C)``, resampling seeds and cases.

    A replicate's mean over the drawn grid equals ``wr @ diff @ wc / (R * C)`` with ``wr``,
    ``wc`` the multinomial draw counts of seeds and cases.
    """
    r, c = diff.shape
    rng = np.random.default_rng(seed)
    wr = rng.multinomial(r, np.full(r, 1.0 / r), size=n_boot)  # (B, R)
    wc = rng.multinomial(c, np.full(c, 1.0 / c), size=n_boot)  # (B, C)
    means = np.einsum("br,rc,bc->b", wr, diff, wc) / (r * c)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return float(lo), float(hi)


def paired_p_value(diff: np.ndarray, test: str = "wilcoxon") -> float:
    """Two-sided p of the per-case differences ``diff.mean(axis=0)`` (``(C,)``) against 0."""
    from scipy import stats

    if test not in TESTS:
        raise ValueError(f"unknown paired test {test!r}; choose one of {TESTS}")
    d = diff.mean(axis=0)
    if not np.any(d != 0):
        return 1.0
    if test == "wilcoxon":
        p = stats.wilcoxon(d).pvalue
    elif np.ptp(d) == 0:  # constant non-zero shift: zero variance, t is infinite
        return 0.0
    else:
        p = stats.ttest_1samp(d, 0.0).pvalue
    return float(p) if p == p else 1.0


def compare_paired(a: np.ndarray, b: np.ndarray, test: str = "wilcoxon", n_boot: int = 10000,
                   seed: int = 0) -> PairedComparison:
    """Compare ``a`` with ``b`` (``(R, C)`` scores, seeds x cases); see the module doc."""
    diff = paired_differences(a, b)
    lo, hi = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    return PairedComparison(float(diff.mean()), lo, hi, paired_p_value(diff, test), test,
                            diff.shape[0], diff.shape[1])


def align_scores(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]]
                 ) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """``(A, B, seeds, cases)``: the ``(R, C)`` matrices of ``a[seed][case]`` and
    ``b[seed][case]`` over the seeds and cases both have (sorted) whose values are finite in
    both for every common seed (e.g. a NaN HD95 drops that case)."""
    seeds = sorted(set(a) & set(b))
    keys = set.intersection(*[set(a[s]) & set(b[s]) for s in seeds]) if seeds else set()
    cases = sorted(k for k in keys if all(
        np.isfinite(float(a[s][k])) and np.isfinite(float(b[s][k])) for s in seeds))
    mat_a = np.array([[float(a[s][k]) for k in cases] for s in seeds], dtype=float)
    mat_b = np.array([[float(b[s][k]) for k in cases] for s in seeds], dtype=float)
    return mat_a, mat_b, seeds, cases
