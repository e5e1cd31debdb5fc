"""Shared fixtures: tiny phantom sites and tiny trained teachers, built once per session.

Plain helpers (configs, TOML writers, corrupted copies) are in ``tests/_helpers.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests._helpers import QUICK_TEACHER, SITES, tiny_teacher_config

TINY_SHAPE = (16, 64, 64)


torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny prostate phantom sites (styles A, B, C), 12 cases each, plus a proxy set."""
    from common.data.phantom import make_phantom, make_proxy

    root = tmp_path_factory.mktemp("sites")
    sites = {f"site_{s.lower()}": make_phantom(root / f"site_{s.lower()}", "prostate", s, 12,
                                               seed=10 + i, shape=TINY_SHAPE)
             for i, s in enumerate("ABC")}
    sites["proxy"] = make_proxy(root / "proxy", n_cases=6, seed=500, shape=TINY_SHAPE)
    return sites


@pytest.fixture(scope="session")
def tiny_teachers(tiny_sites: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, Path]:
    """A barely trained tiny_unet teacher run folder per site (``QUICK_TEACHER``: 1 epoch of 2
    steps at 32 px): the mechanics, transport and caching are under test, never teacher
    quality. Shared read-only by every test: copy a folder before changing it."""
    from site_node.train import run_training

    root = tmp_path_factory.mktemp("teachers")
    for name in SITES:
        run_training(tiny_sites[name], tiny_teacher_config(**QUICK_TEACHER), root / name)
    return {name: root / name for name in SITES}


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): on a
    busy 2-core box, 2 spinning threads run ~6x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
