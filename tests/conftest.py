"""Shared fixtures: tiny phantom sites and tiny trained teachers, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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


def corrupted_copy(src: Path, dst: Path, folder: str, index: int, content: bytes) -> Path:
    """Copy dataset ``src`` to ``dst`` and overwrite its ``index``-th ``folder/*.nii*`` file
    (sorted) with ``content``; the corrupted file's path."""
    import shutil

    shutil.copytree(src, dst)
    victim = sorted((dst / folder).glob("*.nii*"))[index]
    victim.write_bytes(content)
    return victim


def tiny_teacher_config(**kw: object):  # type: ignore[no-untyped-def]
    """A fast TeacherTrainConfig for CPU tests."""
    from site_node.train_config import OptimConfig, TeacherTrainConfig

    base = dict(model="tiny_unet", size=64, epochs=1, batch_size=8, patience=20, device="cpu",
                skip_empty_fraction=0.6,
                optim=OptimConfig(max_lr=0.005, base_lr=1e-5, step_size_up=100))
    base.update(kw)
    return TeacherTrainConfig.model_validate(base)


@pytest.fixture(scope="session")
def tiny_teachers(tiny_sites: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, Path]:
    """A tiny_unet teacher per site, trained 3 epochs at 64px (run folders; mechanics only)."""
    from site_node.train import run_training

    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for name in ("site_a", "site_b", "site_c"):
        cfg = tiny_teacher_config(epochs=3)
        run_training(tiny_sites[name], cfg, root / name)
        out[name] = root / name
    return out
