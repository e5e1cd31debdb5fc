"""Local teacher training: checkpoints, model card, resume, site shift and CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.models.checkpoint import load_model
from site_node.cli import main as site_main
from site_node.train import run_training
from tests.conftest import corrupted_copy, tiny_teacher_config


def test_one_epoch_writes_loadable_checkpoint_and_card(tiny_sites: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    card = run_training(tiny_sites["site_a"], tiny_teacher_config(epochs=1), out)
    model, ckpt = load_model(out / "best.pt")
    x = torch.randn(2, 1, 64, 64)
    assert model(x).shape == (2, 2, 64, 64)
    assert ckpt["model_name"] == "tiny_unet"
    saved = json.loads((out / "teacher.json").read_text())
    assert saved["architecture"] == "tiny_unet" and saved == card
    fp = saved["data_fingerprint"]
    assert fp["cases"]["train"] + fp["cases"]["val"] + fp["cases"]["test"] == 12
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


def test_teacher_loses_dice_on_other_site_style(tiny_sites: dict, tmp_path: Path) -> None:
    """Site shift: a teacher trained on style A is measurably worse on styles B and C."""
    from common.data.layout import discover_dataset
    from common.data.slices import load_volumes
    from common.data.split import load_split
    from common.evaluate import evaluate_volumes, mean_dice

    run_training(tiny_sites["site_a"], tiny_teacher_config(epochs=15), tmp_path / "a")
    model, _ = load_model(tmp_path / "a" / "best.pt")
    held_out = load_split(tmp_path / "a" / "split.json").test
    dev = torch.device("cpu")
    dice = {"site_a": mean_dice(evaluate_volumes(
        model, load_volumes(discover_dataset(tiny_sites["site_a"]), held_out, 64), dev)[0])}
    for name in ("site_b", "site_c"):
        vols = load_volumes(discover_dataset(tiny_sites[name]), None, 64)
        dice[name] = mean_dice(evaluate_volumes(model, vols, dev)[0])
    assert dice["site_a"] > 0.6, dice
    assert dice["site_a"] - max(dice["site_b"], dice["site_c"]) > 0.1, dice


def test_cli_reports_corrupt_nifti_with_its_path(tiny_sites: dict, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    victim = corrupted_copy(tiny_sites["site_b"], data, "imagesTr", 0,
                            b"\x1f\x8b not really a gzip stream")
    code = site_main(["train", "--data", str(data), "--out", str(tmp_path / "o"),
                      "--model", "tiny_unet", "--epochs", "1", "--size", "64", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(victim) in err and len(err.strip().splitlines()) == 1


def test_cli_make_phantom(tmp_path: Path) -> None:
    code = site_main(["make-phantom", "--site-style", "C", "--out", str(tmp_path / "p"),
                      "--cases", "3", "--depth", "8", "--size", "48"])
    assert code == 0
    meta = json.loads((tmp_path / "p" / "dataset.json").read_text())
    assert meta["numTraining"] == 3
