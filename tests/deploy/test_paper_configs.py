"""The paper scenario configs and the compose experiment load as ExperimentConfig."""

from __future__ import annotations

import pytest

from common.config import load_config
from coordinator.distill.config import ExperimentConfig
from tests.deploy._load import ROOT


@pytest.mark.parametrize("rel,n_sites", [("configs/paper_prostate.toml", 3),
                                         ("configs/paper_spleen.toml", 2),
                                         ("deploy/compose/experiment.toml", 3)])
def test_config_loads(rel: str, n_sites: int) -> None:
    cfg = load_config(ROOT / rel, ExperimentConfig)
    assert len(cfg.sites) == n_sites
    assert cfg.min_sites <= n_sites
