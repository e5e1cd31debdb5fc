"""``coordinator distill --rows``: run only some rows of an experiment's config.

A full benchmark config holds every row (every weighting rule, the paper's peers, the single
teachers, the other students, the federated baselines); on a small machine they take hours.
``--rows`` keeps the named rows and leaves the rest out, so the rows a verdict needs can be run
first and the others later into the same out folder: each finished student run is reused (its
folder is keyed by its own fingerprint, :mod:`coordinator.distill.identity`), so a later run
without ``--rows`` trains only what is missing. The report names the rows left out.

Row names are those of the results table: ``student_only``, ``single`` (every single-teacher
row), a weighting row's label (``inverse_dice_loss``, ``hinton_kd``; ``multi_`` prefix
optional), ``local_only``, ``pooled``, ``fedavg``, ``fedprox``, ``fedbn``. The default row (the
first weighting) is always kept: every other row is compared with it.
"""

from __future__ import annotations

from common.config import ConfigError
from coordinator.distill.config import ExperimentConfig

PEERS = ("local_only", "pooled", "fedavg", "fedprox", "fedbn")


def configured_rows(cfg: ExperimentConfig) -> list[str]:
    """The row names ``cfg`` produces, in the report's order (teacher rows aside)."""
    runs = cfg.runs
    names = (["student_only"] if runs.baseline else []) + (["single"] if runs.single_teacher
                                                           else [])
    names += [w.label for w in runs.weightings]
    return names + [p for p in PEERS if getattr(runs, p) not in (None, False)]


def restrict_rows(cfg: ExperimentConfig, wanted: list[str]) -> ExperimentConfig:
    """``cfg`` with only the rows named in ``wanted`` (plus the default row) and
    ``runs.left_out`` listing the others; a name ``cfg`` does not produce is one line listing
    the valid ones."""
    have = configured_rows(cfg)
    keep = {w.removeprefix("multi_") for w in wanted}
    unknown = sorted(keep - set(have))
    if unknown:
        raise ConfigError(f"--rows: {', '.join(unknown)} not in this config's rows; choose "
                          f"from {', '.join(have)}")
    runs = cfg.runs
    default = runs.weightings[0].label if runs.weightings else None
    if default is not None:
        keep.add(default)
    update = {
        "baseline": runs.baseline and "student_only" in keep,
        "single_teacher": runs.single_teacher and "single" in keep,
        "weightings": [w for w in runs.weightings if w.label in keep],
        "local_only": runs.local_only and "local_only" in keep,
        "pooled": runs.pooled and "pooled" in keep,
        **{p: None for p in ("fedavg", "fedprox", "fedbn") if p not in keep},
        "left_out": [n for n in have if n not in keep],
    }
    return cfg.model_copy(update={"runs": runs.model_copy(update=update)})
