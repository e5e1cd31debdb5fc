"""Exact resume: a run stopped after epoch k and resumed ends with bit-identical weights.

Covers the shared skeleton (:mod:`common.training`) with a loop that draws from every random
stream (python ``random``, numpy global, torch CPU via dropout, the DataLoader generator and
the augmenter's own streams), the real student trainer and the real teacher trainer. Each
test also shows the comparison can fail: with one stream left un-restored after resume, the
weights differ.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import common.training as training
from common.data.augment import AugmentConfig, build_augment
from common.models.checkpoint import CheckpointError
from common.training import CsvLog, EarlyStopping, OptimSpec, Trainer, fit_epochs, seed_everything


class _Noisy(Dataset):
    """24 random 16x16 slices; each item uses the augmenter, numpy's and python's global RNG."""

    def __init__(self) -> None:
        self.x = torch.randn(24, 16, 16, generator=torch.Generator().manual_seed(0)).numpy()
        self.augment = build_augment(AugmentConfig(), seed=0)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask, _ = self.augment(self.x[i], (self.x[i] > 0).astype(np.uint8), None)
        img = img + np.float32(0.1 * np.random.rand() + 0.1 * random.random())
        return torch.from_numpy(np.ascontiguousarray(img))[None], torch.from_numpy(
            mask.astype(np.int64))


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Dropout2d(0.3), torch.nn.Conv2d(4, 2, 1))


def _run(folder: Path, epochs: int) -> tuple[torch.nn.Module, EarlyStopping, list[dict]]:
    """Train the tiny net to ``epochs`` (resuming from ``folder/last.pt`` when present)."""
    seed_everything(0)
    model, early = _net(), EarlyStopping(patience=50)
    loader = DataLoader(_Noisy(), batch_size=4, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    spec = OptimSpec(max_lr=0.01, base_lr=1e-4, step_size_up=5)
    tr = Trainer(model, ("tiny", {}), spec, torch.device("cpu"), folder, amp=True,
                 loaders=[loader], extra={"early": early})

    def one_epoch(epoch: int) -> tuple[dict[str, Any], bool]:
        model.train()
        total = 0.0
        for x, y in loader:
            with tr.autocast():
                loss = F.cross_entropy(model(x), y)
            tr.step(loss)
            total += float(loss.detach())
        early.step(-total, epoch)
        return {"loss": f"{total:.8f}"}, False

    log = CsvLog(folder / "metrics.csv", ["epoch", "loss"])
    fit_epochs(tr, epochs, one_epoch, log)
    return model, early, log.read()


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def _perturb(stream: str, loaders: Any) -> None:
    """Leave one random stream in a state other than the saved one."""
    if stream == "python":
        random.seed(999)
    elif stream == "numpy":
        np.random.seed(999)
    elif stream == "torch":
        torch.manual_seed(999)
    elif stream == "loader":
        loaders[0].generator.manual_seed(999)
    elif stream == "augment":
        loaders[0].dataset.augment.reseed(999)


def _break_restore(monkeypatch: pytest.MonkeyPatch, stream: str) -> None:
    real = training.restore_rng

    def restore(state: dict[str, Any], loaders: Any = ()) -> None:
        real(state, loaders)
        _perturb(stream, loaders)

    monkeypatch.setattr(training, "restore_rng", restore)


def test_skeleton_resume_is_bit_identical(tmp_path: Path) -> None:
    full, early_full, rows_full = _run(tmp_path / "full", 4)
    _run(tmp_path / "cut", 2)  # "killed" after epoch 1
    resumed, early_res, rows_res = _run(tmp_path / "cut", 4)
    assert _same_weights(full.state_dict(), resumed.state_dict())
    assert rows_res == rows_full and [r["epoch"] for r in rows_res] == ["0", "1", "2", "3"]
    assert early_res.state_dict() == early_full.state_dict()
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["epoch"] == 3


@pytest.mark.parametrize("stream", ["python", "numpy", "torch", "loader", "augment"])
def test_skeleton_resume_differs_when_one_stream_is_not_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: str
) -> None:
    full, _, _ = _run(tmp_path / "full", 3)
    _run(tmp_path / "cut", 1)
    _break_restore(monkeypatch, stream)
    resumed, _, _ = _run(tmp_path / "cut", 3)
    assert not _same_weights(full.state_dict(), resumed.state_dict())


def test_resume_refuses_an_old_format_checkpoint(tmp_path: Path) -> None:
    _run(tmp_path, 1)
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    state["rng"] = torch.get_rng_state()  # what the old teacher trainer wrote
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="last.pt: written by an older version"):
        _run(tmp_path, 2)


# --- the real trainers -----------------------------------------------------------------


def _student_data(proxy_dir: Path, with_teachers: bool) -> Any:
    from common.kd.targets import TeacherTargets
    from coordinator.distill.proxy import load_proxy
    from coordinator.distill.student import DistillData

    proxy = load_proxy(proxy_dir, 32)
    if not with_teachers:
        return DistillData(proxy, None, [], {})
    fg = torch.from_numpy(proxy.masks).float()
    img = torch.from_numpy(proxy.images[:, 0])
    logits = torch.stack([torch.stack([1 - fg, fg], 1) * 4.0, torch.stack([fg, 1 - fg], 1)])
    n = len(proxy)
    t = TeacherTargets(logits=logits, at_early=torch.stack([img[:, ::2, ::2]] * 2).contiguous(),
                       at_deep=torch.stack([img[:, ::8, ::8]] * 2).contiguous(),
                       rc_early=torch.zeros(2, n), rc_deep=torch.zeros(2, n))
    return DistillData(proxy, t, ["good", "bad"], {})


def _student_cfg(proxy_dir: Path, epochs: int) -> Any:
    from coordinator.distill.config import (
        ExperimentConfig,
        RunsConfig,
        SiteSpec,
        StudentTrainConfig,
    )

    s = StudentTrainConfig(model="enet", size=32, epochs=epochs, batch_size=16, device="cpu",
                           step_size_up=20, max_lr=0.005)
    site = SiteSpec(name="unused", data=proxy_dir, teacher_dir=proxy_dir)  # no scoring here
    return ExperimentConfig(name="tiny", out=proxy_dir, proxy=proxy_dir, sites=[site],
                            student=s, runs=RunsConfig(baseline=True, single_teacher=False,
                                                       weightings=[]))


def _student(data: Any, run: Any, proxy_dir: Path, out: Path, epochs: int) -> dict:
    from coordinator.distill.student import train_student

    (out / "result.json").unlink(missing_ok=True)
    train_student(run, data, _student_cfg(proxy_dir, epochs), out)
    return dict(torch.load(out / "last.pt", weights_only=False)["model"])


def _metric_rows(out: Path) -> list[list[str]]:
    """metrics.csv rows without the wall-clock ``seconds`` column."""
    import csv

    with (out / "metrics.csv").open() as fh:
        return [[v for k, v in r.items() if k != "seconds"] for r in csv.DictReader(fh)]


@pytest.mark.parametrize("kd", [False, True], ids=["no_kd", "two_teachers"])
def test_student_resume_is_bit_identical(tiny_sites: dict, tmp_path: Path, kd: bool) -> None:
    from coordinator.distill.config import WeightingSpec
    from coordinator.distill.student import StudentRun

    run = StudentRun("multi", [0, 1], WeightingSpec(name="inverse_dice_loss")) if kd else \
        StudentRun("student_only")
    data, proxy = _student_data(tiny_sites["proxy"], kd), tiny_sites["proxy"]
    full = _student(data, run, proxy, tmp_path / "full", 3)
    _student(data, run, proxy, tmp_path / "cut", 1)
    resumed = _student(data, run, proxy, tmp_path / "cut", 3)
    assert _same_weights(full, resumed)
    assert _metric_rows(tmp_path / "cut") == _metric_rows(tmp_path / "full")


def test_student_resume_differs_without_rng_restore(tiny_sites: dict, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from coordinator.distill.student import StudentRun

    data, proxy, run = _student_data(tiny_sites["proxy"], False), tiny_sites["proxy"], \
        StudentRun("student_only")
    full = _student(data, run, proxy, tmp_path / "full", 2)
    _student(data, run, proxy, tmp_path / "cut", 1)
    _break_restore(monkeypatch, "loader")
    assert not _same_weights(full, _student(data, run, proxy, tmp_path / "cut", 2))


def _teacher(site: Path, out: Path, epochs: int, resume: bool) -> dict:
    from site_node.train import run_training
    from tests._helpers import tiny_teacher_config

    cfg = tiny_teacher_config(epochs=epochs, patience=50, max_steps_per_epoch=4)
    run_training(site, cfg, out, resume=resume)
    return dict(torch.load(out / "last.pt", weights_only=False)["model"])


def test_teacher_resume_is_bit_identical(tiny_sites: dict, tmp_path: Path) -> None:
    full = _teacher(tiny_sites["site_a"], tmp_path / "full", 3, resume=False)
    _teacher(tiny_sites["site_a"], tmp_path / "cut", 1, resume=False)
    resumed = _teacher(tiny_sites["site_a"], tmp_path / "cut", 3, resume=True)
    assert _same_weights(full, resumed)
    assert _metric_rows(tmp_path / "cut") == _metric_rows(tmp_path / "full")
    best_full = torch.load(tmp_path / "full" / "best.pt", weights_only=False)
    best_cut = torch.load(tmp_path / "cut" / "best.pt", weights_only=False)
    assert best_full["epoch"] == best_cut["epoch"]
    assert _same_weights(best_full["model"], best_cut["model"])
