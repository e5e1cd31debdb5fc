"""Local teacher training: checkpoints, model card, resume, site shift and CLI errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from common.models.checkpoint import load_model
from site_node.cli import main as site_main
from site_node.train import run_training
from tests.conftest import tiny_teacher_config


def test_one_epoch_writes_loadable_checkpoint_and_card(tiny_sites: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    card = run_training(tiny_sites["site_a"], tiny_teacher_config(epochs=1), out)
    model, ckpt = load_model(out / "best.pt")
    x = torch.randn(2, 1, 32, 32)
    assert model(x).shape == (2, 2, 32, 32)
    assert ckpt["model_name"] == "tiny_unet"
    saved = json.loads((out / "teacher.json").read_text())
    assert saved["architecture"] == "tiny_unet" and saved == card
    fp = saved["data_fingerprint"]
    assert fp["cases"]["train"] + fp["cases"]["val"] + fp["cases"]["test"] == 8
    assert 0.0 <= saved["val_dice"] <= 1.0
    assert (out / "curves.png").stat().st_size > 1000
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 2  # header + 1 epoch
    assert any((out / "overlays").glob("*.png"))


def test_resume_continues_from_last_checkpoint(tiny_sites: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_training(tiny_sites["site_a"], tiny_teacher_config(epochs=1, patience=50), out)
    first = torch.load(out / "last.pt", weights_only=False)["model"]
    run_training(tiny_sites["site_a"], tiny_teacher_config(epochs=2, patience=50), out,
                 resume=True)
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1"]
    second = torch.load(out / "last.pt", weights_only=False)
    assert second["epoch"] == 1
    changed = any(not torch.equal(first[k], second["model"][k]) for k in first)
    assert changed


def test_teacher_loses_dice_on_other_site_style(tiny_teachers: dict, tiny_sites: dict) -> None:
    """Site shift: the A-trained teacher is measurably worse on styles B and C."""
    from common.evaluate import evaluate_volumes, mean_dice
    from coordinator.distill.config import SiteSpec
    from coordinator.distill.experiment import load_site_test

    model, _ = load_model(tiny_teachers["site_a"] / "best.pt")
    dev = torch.device("cpu")
    dice = {}
    for name in ("site_a", "site_b", "site_c"):
        spec = SiteSpec(name=name, data=tiny_sites[name], teacher_dir=tiny_teachers[name])
        dice[name] = mean_dice(evaluate_volumes(model, load_site_test(spec, 32), dev)[0])
    assert dice["site_a"] > 0.6, dice
    assert dice["site_a"] - max(dice["site_b"], dice["site_c"]) > 0.05, dice


def test_cli_reports_corrupt_nifti_with_its_path(tiny_sites: dict, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_sites["site_b"], data)
    victim = sorted((data / "imagesTr").glob("*.nii.gz"))[0]
    victim.write_bytes(b"\x1f\x8b not really a gzip stream")
    code = site_main(["train", "--data", str(data), "--out", str(tmp_path / "o"),
                      "--model", "tiny_unet", "--epochs", "1", "--size", "32", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(victim) in err and len(err.strip().splitlines()) == 1


def test_cli_make_phantom(tmp_path: Path) -> None:
    code = site_main(["make-phantom", "--site-style", "C", "--out", str(tmp_path / "p"),
                      "--cases", "3", "--depth", "8", "--size", "48"])
    assert code == 0
    meta = json.loads((tmp_path / "p" / "dataset.json").read_text())
    assert meta["numTraining"] == 3
