"""The coordinator side of the federated transport: a Flower ``ServerApp`` (Deployment Engine).

Run config (``flwr run ... --run-config``, parsed into :class:`coordinator.run_config.RunConfig`;
defaults only in ``deploy/flwr_app/pyproject.toml``): ``config-path`` (ExperimentConfig TOML/YAML),
``min-sites`` (fewest sites to go on with, 0 = the config's ``min_sites``, else all),
``expected-sites`` (kept for compatibility: the roster is the config's sites), ``timeout``
(seconds per round), ``train`` (send ``train`` first), ``chunk-size`` (proxy slices per query
message), ``query-window`` (query chunks in flight per site, 0 = lockstep), ``out`` (override
the experiment's out folder, "" = keep), ``site-keys-dir`` (``<site>.pub`` Ed25519 keys: every
reply's receipt must verify, see :mod:`coordinator.audit_trail`; "" = unverified).

The experiment itself is the one pipeline of ``distill --local``
(:func:`coordinator.distill.experiment.run_experiment`) over the sites reached through the
``Grid`` (:class:`coordinator.fed_sites.GridSites`), then the export: the same files in the out
folder (``results.md/.csv/.png``, paired statistics, costs, ``export/``) and ``run_status.json``,
whose ``ok`` is false with the reason when the run or the export failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from pydantic import ConfigDict, Field

from coordinator.audit_trail import CoordinatorTrail
from coordinator.run_config import RunConfig

if TYPE_CHECKING:
    from coordinator.distill.results_file import ResultRow

__all__ = ["FedSettings", "app", "run_federated"]
app = ServerApp()


class FedSettings(RunConfig):
    """The run config of one federated experiment (:class:`RunConfig`), plus the exchange
    trail that :func:`run_federated` sets once the out folder is known."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    trail: CoordinatorTrail | None = Field(default=None, exclude=True)


def run_federated(grid: Grid, s: FedSettings, run_id: str) -> list[ResultRow]:
    """The whole federated experiment and the export; the result rows (also on disk)."""
    import logging

    from common.config import load_config
    from coordinator.distill.config import ExperimentConfig
    from coordinator.distill.experiment import run_experiment
    from coordinator.export import export_best_multi
    from coordinator.fed_sites import GridSites

    cfg = load_config(s.config_path, ExperimentConfig).resolve_paths(s.config_path.parent)
    cfg = cfg.model_copy(update={"out": Path(s.out).resolve()}) if s.out else cfg
    keys = Path(s.site_keys_dir) if s.site_keys_dir else None
    s.trail = CoordinatorTrail(cfg.out, run_id, keys)
    logging.getLogger(__name__).info(
        "exchange log: %s; receipts %s", s.trail.log.path,
        f"verified against {keys}" if keys else "stored UNVERIFIED (no site-keys-dir)")
    sites = GridSites(grid, s, run_id, cfg, train=s.train, min_sites=s.min_sites)
    return run_experiment(cfg, sites, lambda rows: export_best_multi(cfg.out, rows, cfg))


@app.main()
def main(grid: Grid, context: Context) -> None:
    """ServerApp entry point."""
    from common.logs import ensure_logging

    ensure_logging()
    s = FedSettings.from_run_config(dict(context.run_config))
    run_federated(grid, s, str(context.run_id))
