"""``coordinator distill --local`` end to end on tiny phantoms, caching and resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.distill.config import (
    ExperimentConfig,
    KDConfig,
    RunsConfig,
    SiteSpec,
    StudentTrainConfig,
    WeightingSpec,
)


def _cfg(sites: dict, teachers: dict, out: Path, **student: object) -> ExperimentConfig:
    s = StudentTrainConfig(model="enet", size=32, epochs=2, batch_size=16, device="cpu",
                           step_size_up=20, max_lr=0.005)
    return ExperimentConfig(
        name="tiny", out=out, proxy=sites["proxy"],
        sites=[SiteSpec(name=n, data=sites[n], teacher_dir=teachers[n])
               for n in ("site_a", "site_b", "site_c")],
        student=s.model_copy(update=student), kd=KDConfig(),
        runs=RunsConfig(baseline=True, single_teacher=False,
                        weightings=[WeightingSpec(name="inverse_dice_loss")]),
    )


def test_local_experiment_writes_tables_and_reuses_cache(
    tiny_sites: dict, tiny_teachers: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coordinator import local_sites
    from coordinator.distill import experiment
    from coordinator.local_sites import LocalSites

    cfg = _cfg(tiny_sites, tiny_teachers, tmp_path / "exp")
    rows = experiment.run_experiment(cfg, LocalSites(cfg))
    names = [r["run"] for r in rows]
    assert names == ["teacher_site_a", "teacher_site_b", "teacher_site_c",
                     "student_only", "multi_inverse_dice_loss"]
    multi = rows[-1]
    assert set(multi["sites"]) == {"site_a", "site_b", "site_c"}
    for scores in multi["sites"].values():
        assert 0.0 <= scores["dice_mean"] <= 1.0 and 0.0 <= scores["voe_mean"] <= 1.0
    with (tmp_path / "exp" / "results.csv").open() as fh:
        table = list(csv.reader(fh))
    assert table[0][-1] == "mean Dice" and len(table) == 6
    assert "| multi_inverse_dice_loss |" in (tmp_path / "exp" / "results.md").read_text()
    # paired comparison of the default student with the no-KD run, per test case (1 seed)
    assert "| `multi_inverse_dice_loss` | `student_only` | 1 x " in (
        tmp_path / "exp" / "results.md").read_text()
    assert (tmp_path / "exp" / "results.png").stat().st_size > 1000
    log = (tmp_path / "exp" / "runs" / "multi_inverse_dice_loss" / "metrics.csv").read_text()
    assert "w2" in log.splitlines()[0]
    # second run: every teacher output comes from the cache, every student from result.json
    monkeypatch.setattr(local_sites, "bridged_teacher_outputs", _refuse)
    again = experiment.run_experiment(cfg, LocalSites(cfg))
    assert [r["mean_dice"] for r in again] == [r["mean_dice"] for r in rows]


def _refuse(*_a: object, **_k: object) -> None:
    raise AssertionError("teacher queried again despite the cache")


def test_student_resumes_from_last_checkpoint(tiny_sites: dict, tiny_teachers: dict,
                                              tmp_path: Path) -> None:
    from coordinator.distill.cache import TeacherCache
    from coordinator.distill.proxy import load_proxy
    from coordinator.distill.student import DistillData, StudentRun, train_student
    from coordinator.local_sites import load_site_test, local_targets

    cfg = _cfg(tiny_sites, tiny_teachers, tmp_path / "exp", epochs=1)
    proxy = load_proxy(cfg.proxy, 32)
    targets = local_targets(cfg, proxy, TeacherCache(tmp_path / "cache"))
    tests = {s.name: load_site_test(s, 32)[:1] for s in cfg.sites}
    data = DistillData(proxy, targets, [s.name for s in cfg.sites], tests)
    run = StudentRun("multi", [0, 1, 2], WeightingSpec(name="inverse_dice_loss"))
    out = tmp_path / "run"
    train_student(run, data, cfg, out)
    (out / "result.json").unlink()
    cfg2 = cfg.model_copy(update={"student": cfg.student.model_copy(update={"epochs": 2})})
    res = train_student(run, data, cfg2, out)
    epochs = [r.split(",")[0] for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["0", "1"]
    assert json.loads((out / "result.json").read_text())["mean_dice"] == res["mean_dice"]
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 1


def test_distill_dataset_moves_teacher_maps_with_the_image(tiny_sites: dict) -> None:
    from common.data.augment import AugmentConfig, build_augment
    from common.kd.targets import TeacherTargets
    from coordinator.distill.dataset import DistillDataset
    from coordinator.distill.proxy import load_proxy

    proxy = load_proxy(tiny_sites["proxy"], 32)
    n = len(proxy)
    img = torch.from_numpy(proxy.images[:, 0])
    fg = torch.from_numpy(proxy.masks).float()
    logits = torch.stack([1 - fg, fg], 1)[None] * 5.0  # a perfect teacher, (1,N,2,32,32)
    t = TeacherTargets(logits=logits, at_early=img[None, :, ::2, ::2].contiguous(),
                       at_deep=img[None, :, ::8, ::8].contiguous(),
                       rc_early=torch.zeros(1, n), rc_deep=torch.zeros(1, n))
    geo = AugmentConfig(hflip_p=1.0, vflip_p=0.0, shift_scale_rotate_p=0.0, elastic_p=0.0,
                        grid_distortion_p=0.0, optical_distortion_p=0.0,
                        brightness_contrast_p=0.0, coarse_dropout_p=0.0)
    ds = DistillDataset(proxy, t, build_augment(geo, seed=0), renormalise_at=False)
    i = int(np.argmax(proxy.masks.reshape(n, -1).sum(1)))
    item = ds[i]
    assert torch.equal(item["mask"], torch.from_numpy(proxy.masks[i]).long().flip(-1))
    teacher_fg = item["logits"][0].argmax(0)
    assert torch.equal(teacher_fg, item["mask"])
    moved, orig = item["at_early"][0].flatten(), t.at_early[0, i]
    flipped_corr = torch.corrcoef(torch.stack([moved, orig.flip(-1).flatten()]))[0, 1]
    still_corr = torch.corrcoef(torch.stack([moved, orig.flatten()]))[0, 1]
    assert flipped_corr > 0.9 and flipped_corr > still_corr + 0.2, (flipped_corr, still_corr)


def test_slice_weights_are_per_input_and_ignore_augmentation(tiny_sites: dict) -> None:
    """Weights come from the cached (un-augmented) outputs: an inverted teacher gets ~0 weight
    on every slice, empty ones included, and chunking does not change them."""
    from common.kd.fusion import build_weighting
    from common.kd.targets import TeacherTargets
    from coordinator.distill.proxy import load_proxy
    from coordinator.distill.student import slice_weights

    proxy = load_proxy(tiny_sites["proxy"], 32)
    n = len(proxy)
    fg = torch.from_numpy(proxy.masks).float()
    good = torch.stack([1 - fg, fg], 1) * 4.0 - 2.0
    logits = torch.stack([good, good.flip(1)])  # teacher 1 = inverted foreground
    t = TeacherTargets(logits=logits, at_early=torch.zeros(2, n, 16, 16),
                       at_deep=torch.zeros(2, n, 4, 4), rc_early=torch.zeros(2, n),
                       rc_deep=torch.zeros(2, n))
    w = slice_weights(WeightingSpec(name="inverse_dice_loss"), t, proxy.masks, chunk=7)
    assert w.shape == (n, 2) and torch.allclose(w.sum(1), torch.ones(n))
    assert (proxy.masks.reshape(n, -1).sum(1) == 0).any()  # the proxy has empty slices
    assert float(w[:, 1].max()) < 0.01
    direct = build_weighting("inverse_dice_loss")(torch.softmax(logits, 2),
                                                  torch.from_numpy(proxy.masks).long())
    assert torch.allclose(w, direct, atol=1e-6)
