"""``site-node predict`` with a teacher run folder, then ``site-node evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.common._predict_data import PLAN, SIZE, tiny_model, write_dataset, write_teacher


def test_predict_then_evaluate_reproduce_the_training_numbers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from common.data.layout import discover_dataset
    from common.data.plan import Plan
    from common.data.slices import load_volumes
    from common.inference.evaluate import evaluate_volumes
    from site_node.cli import main

    ds = write_dataset(tmp_path / "ds")
    model = tiny_model(ds)
    teacher = write_teacher(tmp_path / "teacher", model)
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(teacher), "--in", str(ds / "imagesTr"), "--out",
                 str(pred), "--overlays", "--device", "cpu"]) == 0
    assert "wrote 2 masks" in capsys.readouterr().out
    for case in ("lps01", "ras02"):
        image = nib.load(str(ds / "imagesTr" / f"{case}_0000.nii.gz"))
        mask = nib.load(str(pred / f"{case}.nii.gz"))
        assert mask.shape == image.shape
        np.testing.assert_array_equal(mask.affine, image.affine)
    assert len(list((pred / "overlays").glob("*.png"))) == 2
    assert main(["evaluate", "--pred", str(pred), "--labels", str(ds / "labelsTr")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| case | Dice | VOE | HD95 mm |") and "| **mean** |" in out
    got = json.loads((pred / "evaluation.json").read_text())["cases"]
    vols = load_volumes(discover_dataset(ds), None, SIZE, plan=Plan.model_validate(PLAN))
    train, _ = evaluate_volumes(model, vols, torch.device("cpu"))
    for case, s in train.items():
        assert (got[case]["dice"], got[case]["voe"], got[case]["hd95"]) == pytest.approx(
            (s.dice, s.voe, s.hd95), rel=1e-9, abs=1e-12)
    assert (pred / "evaluation.csv").is_file() and (pred / "evaluation.md").is_file()


def test_missing_teacher_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from site_node.cli import main

    (tmp_path / "in").mkdir()
    rc = main(["predict", "--model", str(tmp_path / "run"), "--in", str(tmp_path / "in"),
               "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "best.pt: checkpoint not found" in err


def test_predict_uses_the_teacher_version_the_site_serves(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """After ``site-node teacher use 1`` the site predicts with versions/1, not the base
    folder: here the base's weights are deliberately broken, so only the served version works."""
    import shutil

    from site_node.cli import main
    from site_node.teacher_versions import new_version_dir, use_version

    ds = write_dataset(tmp_path / "ds")
    teacher = write_teacher(tmp_path / "teacher", tiny_model(ds))
    v1 = new_version_dir(teacher)
    for name in ("best.pt", "teacher.json"):
        shutil.copy(teacher / name, v1 / name)
    use_version(teacher, "1")
    (teacher / "best.pt").write_bytes(b"not a checkpoint")
    caplog.set_level("INFO")
    assert main(["predict", "--model", str(teacher), "--in", str(ds / "imagesTr"), "--out",
                 str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 2
    assert "serves version" in caplog.text and str(v1) in caplog.text
