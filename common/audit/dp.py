"""Differential-privacy maths: Gaussian-mechanism accounting, release sensitivity.

This module holds the DP maths only; the exchange log lives in :mod:`common.audit.log` and
:mod:`common.audit.report` combines the two. Per-run (epsilon, delta) accounting of the noise a
site added to what it sent is read from the site's exchange-log entries: each ``sent`` query
reply logs its codec (``noise_sigma``, ``noise_on``), its slice count ``n`` and every array's
shape. Every noised slice counts as one Gaussian release with noise multiplier
``z = sigma / Delta``; the releases of a run are composed by the Renyi-DP accountant of the
maintained ``dp-accounting`` package (:func:`dp_epsilon`), whose RDP of one Gaussian release is
the closed form ``alpha / (2 z^2)`` (so ``k`` releases: ``k * alpha * Delta^2 / (2 sigma^2)``),
converted to (epsilon, delta) with the improved conversion of Canonne, Kamath & Steinke 2020
(Prop. 12 of arXiv:2004.00010, ``eps = rdp + ln(1 - 1/alpha) - ln(delta * alpha) / (alpha - 1)``,
minimised over the accountant's orders).

The L2 sensitivity is *derived* from the ranges of what is released, for ANY change of the
private data (even a different teacher), so it needs no assumption about the teacher
(:func:`release_sensitivity`). The noise of :func:`common.compress.compress_logits` and
:func:`common.compress.noise_features` has std ``sigma`` per probability and per cosine and
``sigma / sqrt(h*w)`` per attention-map element, so dividing each array by its own scale
gives one isotropic Gaussian mechanism with std ``sigma`` and sensitivity::

    Delta^2 = 2 * P  +  sum_maps 2 * h * w  +  4 * n_cosines        (per slice)

- probabilities: each of the ``P`` released pixels is a point of the simplex, so it moves by
  at most ``sqrt(2)`` in L2 (``P = S^2``, or ``(S/f)^2`` for ``downsample``);
- attention maps are non-negative with unit L2 norm, so two differ by at most ``sqrt(2)``,
  i.e. ``sqrt(2 h w)`` in units of their noise std;
- region-contrast cosines lie in [-1, 1]: at most 2 each.

Noise on logits (``noise_on = "logits"``) or paper-form attention maps (``at_form = "paper"``,
unnormalised) has no bound: ``inf``. This worst case is honest and large (``Delta ~ 102`` at
64 px), so at sigmas that keep the student useful the stated epsilon is finite but huge: it
covers the released answers against any change of the site's data, nothing about the teacher's
training, which used no DP. ``dp_accounting`` is imported inside functions (it loads scipy).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from common.teacher_fields import AT_FIELDS, SCALAR_FIELDS

if TYPE_CHECKING:
    from common.audit.entries import ArrayDigest, AuditEntry

DP_DELTA = 1e-5  # delta of the whole run's (epsilon, delta)
ACCOUNTANT = "RDP (dp-accounting RdpAccountant, Gaussian mechanism)"
_PROB_KEYS = ("logits", "logits_ds", "probs_u8")  # one of them carries the class outputs
_MAP_KEYS = AT_FIELDS
_COS_KEYS = SCALAR_FIELDS

#: One group of releases: (noise std sigma, L2 sensitivity Delta, number of slices).
Release = tuple[float, float, int]


def _check(sigma: float, sensitivity: float, delta: float, n: int) -> None:
    if not sigma > 0 or not sensitivity >= 0 or not 0 < delta < 1 or n < 0:
        raise ValueError(f"need sigma > 0, sensitivity >= 0, 0 < delta < 1, n >= 0; got "
                         f"sigma={sigma}, sensitivity={sensitivity}, delta={delta}, n={n}")


def compose_gaussian(releases: Sequence[Release], delta: float = DP_DELTA
                     ) -> tuple[float, float]:
    """``(epsilon, optimal RDP order)`` of all ``releases`` composed (RDP accountant).

    Each ``(sigma, Delta, k)`` is ``k`` Gaussian releases with noise multiplier
    ``sigma / Delta``. ``inf`` when a group with ``k > 0`` has an unbounded ``Delta``;
    ``(0, 0)`` when nothing was released."""
    for sigma, sens, n in releases:
        _check(sigma, sens, delta, n)
    live = [(s, d, n) for s, d, n in releases if n > 0 and d > 0]
    if any(math.isinf(d) for _, d, _ in live):
        return math.inf, 0.0
    if not live:
        return 0.0, 0.0
    from dp_accounting import dp_event, rdp

    acc = rdp.RdpAccountant()
    for sigma, sens, n in live:
        acc.compose(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(sigma / sens), n))
    eps, order = acc.get_epsilon_and_optimal_order(delta)
    return float(eps), float(order)


def dp_epsilon(sigma: float, sensitivity: float, delta: float, n_queries: int) -> float:
    """Epsilon (at total ``delta``) of ``n_queries`` Gaussian releases with noise std ``sigma``
    and L2 sensitivity ``sensitivity`` each, composed by the RDP accountant
    (:func:`compose_gaussian`); ``inf`` for an unbounded sensitivity. ``sensitivity`` is the L2
    sensitivity of ONE query's whole released vector to any change of the private data;
    :func:`release_sensitivity` derives it from the output ranges."""
    return compose_gaussian([(sigma, sensitivity, n_queries)], delta)[0]


def gaussian_rdp(sigma: float, sensitivity: float, n_queries: int, alpha: float) -> float:
    """Closed-form Renyi DP of order ``alpha`` of ``n_queries`` Gaussian releases:
    ``n * alpha * Delta^2 / (2 sigma^2)`` (Mironov 2017, Prop. 7 and composition)."""
    return n_queries * alpha * sensitivity ** 2 / (2.0 * sigma ** 2)


def rdp_to_dp(rdp: float, alpha: float, delta: float) -> float:
    """The (epsilon, ``delta``) of an (``alpha``, ``rdp``)-RDP mechanism, by the conversion the
    accountant uses (Canonne, Kamath & Steinke 2020):
    ``rdp + ln(1 - 1/alpha) - ln(delta * alpha) / (alpha - 1)``."""
    return rdp + math.log1p(-1.0 / alpha) - math.log(delta * alpha) / (alpha - 1.0)


def release_sensitivity(arrays: Sequence[ArrayDigest], config: Mapping[str, Any]) -> float:
    """L2 sensitivity of ONE slice of a noised reply in units of its noise std (module doc).

    ``arrays``: the logged digests, batch first (``(N,K,s,s)`` outputs, ``(N,h,w)`` maps,
    ``(N,)`` cosines). ``inf`` for logit noise, paper-form maps or no logged class output.
    """
    bounded = config.get("noise_on", "probs") == "probs"
    if not bounded or config.get("at_form", "zagoruyko") != "zagoruyko":
        return math.inf
    shapes = {a.name: a.shape for a in arrays}
    outs = [shapes[k] for k in _PROB_KEYS if k in shapes]
    if not outs:
        return math.inf
    sq = 2.0 * math.prod(outs[0][2:])
    sq += sum(2.0 * math.prod(shapes[k][1:]) for k in _MAP_KEYS if k in shapes)
    sq += sum(4.0 * math.prod(shapes[k][1:]) for k in _COS_KEYS if k in shapes)
    return math.sqrt(sq)


def _releases(entries: list[AuditEntry], sensitivity: float | None
              ) -> dict[str, dict[tuple[float, float], int]]:
    """Per run: noised slices sent, grouped by ``(sigma, Delta)``."""
    per_run: dict[str, dict[tuple[float, float], int]] = defaultdict(lambda: defaultdict(int))
    for e in entries:
        sigma = float(e.config.get("noise_sigma") or 0.0)
        if e.direction == "out" and e.decision == "sent" and sigma > 0:
            sens = release_sensitivity(e.arrays, e.config) if sensitivity is None else sensitivity
            per_run[e.run_id][(sigma, sens)] += int(e.config.get("n") or 1)
    return per_run


def _row(run_id: str, groups: Mapping[tuple[float, float], int], delta: float) -> dict[str, Any]:
    releases = [(sigma, sens, n) for (sigma, sens), n in sorted(groups.items())]
    eps, order = compose_gaussian(releases, delta)
    text = ", ".join(f"{n} x sigma {s:g} / sensitivity {d:.4g}" for s, d, n in releases)
    return {"run_id": run_id, "slices": sum(n for _, _, n in releases), "releases": text,
            "sigma": min(s for s, _, _ in releases), "sensitivity": max(d for _, d, _ in releases),
            "delta": delta, "epsilon": eps, "rdp_order": order, "accountant": ACCOUNTANT}


def dp_accounting(entries: list[AuditEntry], delta: float = DP_DELTA,
                  sensitivity: float | None = None) -> list[dict[str, Any]]:
    """Per run (and, with several runs, ``"(all runs)"`` composed): noised slices sent
    (``noise_sigma`` > 0 in the reply's logged config) and the (epsilon, delta) of the RDP
    accountant over them (:func:`compose_gaussian`; ``inf`` = unbounded sensitivity).
    ``sensitivity`` None derives it per reply (:func:`release_sensitivity`). A coordinator
    can open new runs, so the all-runs row is the site's total loss over this log."""
    per_run = _releases(entries, sensitivity)
    rows = [_row(run, groups, delta) for run, groups in sorted(per_run.items())]
    if len(rows) > 1:
        total: dict[tuple[float, float], int] = defaultdict(int)
        for groups in per_run.values():
            for key, n in groups.items():
                total[key] += n
        rows.append(_row("(all runs)", total, delta))
    return rows
