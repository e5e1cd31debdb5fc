"""Per-run (epsilon, delta) accounting of the noise a site added to what it sent.

Read from the site's exchange log: each ``sent`` query reply logs its codec (``noise_sigma``)
and its slice count ``n``. Every noised slice counts as one Gaussian release; the bound is
:func:`common.compress.dp_epsilon` (see there for what it does and does not promise).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.audit import AuditEntry

DP_DELTA = 1e-5  # per released slice
DP_SENSITIVITY = 1.0  # assumed L2 sensitivity of one slice's release (not derived)


def dp_accounting(entries: list[AuditEntry], delta: float = DP_DELTA,
                  sensitivity: float = DP_SENSITIVITY) -> list[dict[str, Any]]:
    """Per run: noised slices sent (``noise_sigma`` > 0 in the reply's logged config) and the
    (epsilon, delta) of :func:`common.compress.dp_epsilon` with linear and advanced composition
    over those slices (one Gaussian release per slice; ``inf`` = no guarantee at that sigma)."""
    from common.compress import dp_epsilon

    per_run: dict[tuple[str, float], int] = defaultdict(int)
    for e in entries:
        sigma = float(e.config.get("noise_sigma") or 0.0)
        if e.direction == "out" and e.decision == "sent" and sigma > 0:
            per_run[(e.run_id, sigma)] += int(e.config.get("n") or 1)
    return [{"run_id": run, "sigma": sigma, "slices": n, "delta": delta,
             "sensitivity": sensitivity,
             "epsilon_linear": dp_epsilon(sigma, sensitivity, delta, n, "linear"),
             "epsilon_advanced": dp_epsilon(sigma, sensitivity, delta, n, "advanced")}
            for (run, sigma), n in sorted(per_run.items())]
