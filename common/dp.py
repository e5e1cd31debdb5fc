"""Per-run (epsilon, delta) accounting of the noise a site added to what it sent.

Read from the site's exchange log: each ``sent`` query reply logs its codec (``noise_sigma``,
``noise_on``), its slice count ``n`` and every array's shape. Every noised slice counts as one
Gaussian release; the bound is :func:`common.compress.dp_epsilon`.

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
unnormalised) has no bound: ``inf``.
This worst case is honest and large (``Delta ~ 102`` at 64 px), so a formal guarantee needs a
sigma far above what keeps the student useful; ``epsilon = inf`` at useful sigmas is the truth
for a single teacher's outputs, not an artefact of the accounting.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.audit import ArrayDigest, AuditEntry

DP_DELTA = 1e-5  # per released slice
_PROB_KEYS = ("logits", "logits_ds", "probs_u8")  # one of them carries the class outputs
_MAP_KEYS = ("at_early", "at_deep")
_COS_KEYS = ("rc_early", "rc_deep")


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


def dp_accounting(entries: list[AuditEntry], delta: float = DP_DELTA,
                  sensitivity: float | None = None) -> list[dict[str, Any]]:
    """Per run: noised slices sent (``noise_sigma`` > 0 in the reply's logged config) and the
    (epsilon, delta) of :func:`common.compress.dp_epsilon` with linear and advanced composition
    over those slices (one Gaussian release per slice; ``inf`` = no guarantee at that sigma).
    ``sensitivity`` None derives it per reply (:func:`release_sensitivity`); an unbounded one
    gives ``inf`` (``dp_epsilon``'s per-slice bound exceeds 1)."""
    from common.compress import dp_epsilon

    per_run: dict[tuple[str, float, float], int] = defaultdict(int)
    for e in entries:
        sigma = float(e.config.get("noise_sigma") or 0.0)
        if e.direction == "out" and e.decision == "sent" and sigma > 0:
            sens = release_sensitivity(e.arrays, e.config) if sensitivity is None else sensitivity
            per_run[(e.run_id, sigma, sens)] += int(e.config.get("n") or 1)
    return [{"run_id": run, "sigma": sigma, "slices": n, "delta": delta, "sensitivity": sens,
             "epsilon_linear": dp_epsilon(sigma, sens, delta, n, "linear"),
             "epsilon_advanced": dp_epsilon(sigma, sens, delta, n, "advanced")}
            for (run, sigma, sens), n in sorted(per_run.items())]
