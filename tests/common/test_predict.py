"""Predict a folder of NIfTI images onto each image's own grid, and score a folder of
predictions with the training code's metrics (common/inference/predict.py,
common/inference/evaluate_folder.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.errors import DataError
from tests.common._predict_data import CASES, affine, tiny_model, write_dataset, write_teacher


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Dataset, fitted tiny model, its teacher folder, and its predictions."""
    from common.inference.predict import load_teacher, predict_folder

    root = tmp_path_factory.mktemp("predict")
    ds = write_dataset(root / "ds")
    model = tiny_model(ds)
    teacher = write_teacher(root / "teacher", model)
    written = predict_folder(load_teacher(teacher, "cpu"), ds / "imagesTr", root / "pred",
                             overlays=True)
    return {"root": root, "ds": ds, "model": model, "teacher": teacher, "written": written}


def test_masks_have_the_inputs_shape_affine_and_zooms(setup: dict) -> None:
    ds, written = setup["ds"], setup["written"]
    assert [p.name for p in written] == ["lps01.nii.gz", "ras02.nii.gz"]  # _0000 stripped
    for mask_path in written:
        case = mask_path.name.split(".")[0]
        shape, zooms, signs = CASES[case]
        image = nib.load(str(ds / "imagesTr" / f"{case}_0000.nii.gz"))
        mask = nib.load(str(mask_path))
        assert mask.shape == shape == image.shape
        np.testing.assert_array_equal(mask.affine, image.affine)
        np.testing.assert_allclose(mask.affine, affine(zooms, signs))
        assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(image.affine)
        assert mask.header.get_zooms() == image.header.get_zooms()
        data = np.asarray(mask.dataobj)
        assert mask.get_data_dtype() == np.uint8 and set(np.unique(data)) == {0, 1}
    assert nib.aff2axcodes(nib.load(str(written[0])).affine) == ("L", "P", "S")
    assert len(list((setup["root"] / "pred" / "overlays").glob("overlay_*.png"))) == 2


def test_evaluate_reproduces_the_training_evaluation(setup: dict) -> None:
    """Per-case scores of ``evaluate`` on the written masks == what training reports."""
    import torch

    from common.data.layout import discover_dataset
    from common.data.plan import Plan
    from common.data.slices import load_volumes
    from common.inference.evaluate import evaluate_volumes
    from common.inference.evaluate_folder import evaluate_folder
    from tests.common._predict_data import PLAN, SIZE

    vols = load_volumes(discover_dataset(setup["ds"]), None, SIZE, plan=Plan.model_validate(PLAN))
    train, _ = evaluate_volumes(setup["model"], vols, torch.device("cpu"))
    got = evaluate_folder(setup["root"] / "pred", setup["ds"] / "labelsTr")
    assert sorted(got) == sorted(train) == ["lps01", "ras02"]
    for case, s in got.items():
        assert 0.5 < s.dice < 1.0 and math.isfinite(s.hd95) and s.hd95 > 0  # informative
        assert (s.dice, s.voe, s.hd95) == pytest.approx(
            (train[case].dice, train[case].voe, train[case].hd95), rel=1e-9, abs=1e-12)


def _box_pair(folder: Path, shift: int) -> None:
    """Label: a 4x4x2 box; prediction: the same box shifted by ``shift`` voxels along x."""
    aff = affine((0.8, 0.5, 3.0), (-1, -1, 1))
    label = np.zeros((10, 9, 4), np.uint8)
    label[2:6, 2:6, 1:3] = 1
    pred = np.roll(label, shift, axis=0)
    for sub, arr in (("labels", label), ("pred", pred)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, aff), str(folder / sub / f"box{shift}.nii.gz"))


def test_evaluate_folder_by_hand(tmp_path: Path) -> None:
    from common.inference.evaluate_folder import evaluate_folder, write_evaluation

    _box_pair(tmp_path, 0)
    _box_pair(tmp_path, 1)
    scores = evaluate_folder(tmp_path / "pred", tmp_path / "labels")
    assert (scores["box0"].dice, scores["box0"].voe, scores["box0"].hd95) == (1.0, 0.0, 0.0)
    # shifted by one voxel: |P∩G| = 3*4*2 = 24, |P| = |G| = 32, |P∪G| = 40
    assert scores["box1"].dice == pytest.approx(48 / 64)
    assert scores["box1"].voe == pytest.approx(1 - 24 / 40)
    write_evaluation(scores, tmp_path / "ev", {"pred": "p"})
    doc = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert doc["summary"]["dice_mean"] == pytest.approx((1.0 + 0.75) / 2)
    assert doc["cases"]["box1"]["voe"] == pytest.approx(0.4) and doc["pred"] == "p"
    rows = (tmp_path / "ev" / "evaluation.csv").read_text().splitlines()
    assert rows[0] == "case,dice,voe,hd95_mm" and rows[1].startswith("box0,1.0,0.0,0.0")
    assert [r.split(",")[0] for r in rows[3:]] == ["mean", "std"]
    assert "| **mean** | 0.8750 |" in (tmp_path / "ev" / "evaluation.md").read_text()


def test_undefined_hd95_is_null_in_strict_json(tmp_path: Path) -> None:
    from common.inference.evaluate_folder import evaluate_folder, write_evaluation

    _box_pair(tmp_path, 0)
    empty = tmp_path / "pred" / "box0.nii.gz"
    img = nib.load(str(empty))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), str(empty))
    scores = evaluate_folder(tmp_path / "pred", tmp_path / "labels")
    assert scores["box0"].dice == 0.0 and math.isnan(scores["box0"].hd95)
    write_evaluation(scores, tmp_path / "ev", {})
    text = (tmp_path / "ev" / "evaluation.json").read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert doc["cases"]["box0"]["hd95"] is None and doc["summary"]["hd95_undefined"] == 1.0


def test_prediction_without_label_is_one_line_naming_it(tmp_path: Path) -> None:
    from common.inference.evaluate_folder import evaluate_folder

    _box_pair(tmp_path, 0)
    (tmp_path / "labels" / "box0.nii.gz").rename(tmp_path / "labels" / "other.nii.gz")
    with pytest.raises(DataError, match=r"pred/box0.nii.gz: no label box0.nii.gz"):
        evaluate_folder(tmp_path / "pred", tmp_path / "labels")


def test_multi_label_files_need_the_training_label_choice(tmp_path: Path) -> None:
    from common.inference.evaluate_folder import evaluate_folder

    _box_pair(tmp_path, 0)
    path = tmp_path / "labels" / "box0.nii.gz"
    img = nib.load(str(path))
    lab = np.asarray(img.dataobj).copy()
    lab[7:9, 6:8, 0:2] = 2  # a second organ the prediction does not cover
    nib.save(nib.Nifti1Image(lab, img.affine), str(path))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1,
                                                                  "b": 2}}))
    with pytest.raises(DataError, match="declares 2 foreground labels"):
        evaluate_folder(tmp_path / "pred", tmp_path / "labels")
    assert evaluate_folder(tmp_path / "pred", tmp_path / "labels", "a")["box0"].dice == 1.0
    both = evaluate_folder(tmp_path / "pred", tmp_path / "labels", "a,b")["box0"]
    assert both.dice == pytest.approx(2 * 32 / (32 + 40))  # 8 voxels of label b missed


def test_list_images_skips_labels_and_extra_channels(tmp_path: Path) -> None:
    from common.inference.predict import case_name, list_images

    for name in ("Case00.nii.gz", "Case00_segmentation.nii.gz", "x_0000.nii.gz",
                 "x_0001.nii.gz", "y.nii", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["Case00.nii.gz", "x_0000.nii.gz",
                                                       "y.nii"]
    assert [case_name(p) for p in list_images(tmp_path)] == ["Case00", "x", "y"]
    with pytest.raises(DataError, match="no NIfTI images"):
        list_images(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_teacher_without_plan_uses_the_legacy_default(tmp_path: Path) -> None:
    from common.inference.predict import PredictError, teacher_plan

    (tmp_path / "teacher.json").write_text(json.dumps({"input": {"size": 48}}))
    plan = teacher_plan(tmp_path)
    assert (plan.size, plan.spacing, plan.norm) == (48, None, "mri")
    (tmp_path / "teacher.json").write_text(json.dumps({"plan": {"size": -1}}))
    with pytest.raises(PredictError, match="teacher.json: invalid preprocessing plan"):
        teacher_plan(tmp_path)


def test_prostate_layout_pairs_with_the_segmentation_not_the_image(tmp_path: Path) -> None:
    """In ``CaseNN.nii.gz`` + ``CaseNN_segmentation.nii.gz`` folders the image shares the
    prediction's name: the label is the ``_segmentation`` file."""
    from common.inference.evaluate_folder import pair_folders

    for folder, names in (("data", ("Case00.nii.gz", "Case00_segmentation.nii.gz")),
                          ("pred", ("Case00.nii.gz",))):
        (tmp_path / folder).mkdir()
        for n in names:
            (tmp_path / folder / n).write_bytes(b"")
    (pair,) = pair_folders(tmp_path / "pred", tmp_path / "data")
    assert pair.case == "Case00" and pair.label.name == "Case00_segmentation.nii.gz"
