"""``coordinator predict`` / ``evaluate`` with an exported student that carries its plan."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.common._predict_data import PLAN, SIZE, tiny_model, write_dataset


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from common.data.layout import discover_dataset
    from common.data.plan import Plan
    from common.data.slices import load_volumes
    from coordinator.distill.proxy import proxy_from_volumes
    from coordinator.export import export_student

    root = tmp_path_factory.mktemp("export")
    ds = write_dataset(root / "ds")
    model = tiny_model(ds)
    plan = Plan.model_validate(PLAN)
    proxy = proxy_from_volumes(load_volumes(discover_dataset(ds), None, SIZE, plan=plan), plan=plan)
    spec = {"model_name": "tiny_unet", "model_kwargs": {"in_channels": 1, "num_classes": 2}}
    paths = export_student(model, root / "export", SIZE, {"run": "multi_x"}, plan=PLAN,
                           spec=spec, proxy=proxy)
    return {"root": root, "ds": ds, "model": model, "paths": paths, "proxy": proxy}


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


def test_every_export_file_carries_the_plan(exported: dict) -> None:
    import onnx
    import torch

    from common.data.plan import Plan
    from common.inference.predict import PLAN_EXTRA_FILE, PLAN_KEY

    paths, want = exported["paths"], Plan.model_validate(PLAN)
    props = {p.key: p.value for p in onnx.load(str(paths["onnx"])).metadata_props}
    assert Plan.model_validate_json(props[PLAN_KEY]) == want
    props = {p.key: p.value for p in onnx.load(str(paths["onnx-int8"])).metadata_props}
    assert Plan.model_validate_json(props[PLAN_KEY]) == want
    extra = {PLAN_EXTRA_FILE: ""}
    torch.export.load(str(paths["pt2"]), extra_files=extra)
    assert Plan.model_validate_json(extra[PLAN_EXTRA_FILE]) == want
    assert Plan.model_validate(torch.load(paths["eager"], weights_only=False)["plan"]) == want
    assert Plan.model_validate(json.loads(paths["card"].read_text())["plan"]) == want


def test_every_runtime_predicts_the_same_masks(exported: dict) -> None:
    from coordinator.cli import main

    root, ds = exported["root"], exported["ds"]
    for runtime in ("eager", "pt2", "onnx", "onnx-int8"):
        assert main(["predict", "--model", str(root / "export"), "--in", str(ds / "imagesTr"),
                     "--out", str(root / runtime), "--runtime", runtime]) == 0
    card = json.loads(exported["paths"]["card"].read_text())
    assert card["runtimes"]["onnx-int8"]["agreement"] >= 0.995  # on the proxy slices
    onnx_masks = _masks(root / "onnx")
    assert list(onnx_masks) == ["lps01.nii.gz", "ras02.nii.gz"]
    for name, mask in onnx_masks.items():
        np.testing.assert_array_equal(mask, _masks(root / "pt2")[name])
        np.testing.assert_array_equal(mask, _masks(root / "eager")[name])
        assert (mask == _masks(root / "onnx-int8")[name]).mean() >= 0.995
        image = nib.load(str(ds / "imagesTr" / name.replace(".nii.gz", "_0000.nii.gz")))
        pred = nib.load(str(root / "onnx" / name))
        assert pred.shape == image.shape
        np.testing.assert_array_equal(pred.affine, image.affine)
        assert 0 < mask.mean() < 0.5  # an informative mask, not empty nor full


def test_export_masks_equal_the_eager_model_and_evaluate_matches(exported: dict) -> None:
    """The export reproduces the eager student's native masks and the training scores."""
    import torch

    from common.data.layout import discover_dataset
    from common.data.plan import Plan
    from common.data.slices import load_volumes
    from common.inference.evaluate import evaluate_volumes
    from coordinator.cli import main

    root, ds = exported["root"], exported["ds"]
    out = root / "onnx_file"
    assert main(["predict", "--model", str(exported["paths"]["onnx"]), "--in",
                 str(ds / "imagesTr"), "--out", str(out), "--overlays"]) == 0
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert main(["evaluate", "--pred", str(out), "--labels", str(ds / "labelsTr"),
                 "--out", str(root / "ev")]) == 0
    got = json.loads((root / "ev" / "evaluation.json").read_text())["cases"]
    vols = load_volumes(discover_dataset(ds), None, SIZE, plan=Plan.model_validate(PLAN))
    train, _ = evaluate_volumes(exported["model"], vols, torch.device("cpu"))
    for case, s in train.items():
        assert (got[case]["dice"], got[case]["voe"], got[case]["hd95"]) == pytest.approx(
            (s.dice, s.voe, s.hd95), rel=1e-9, abs=1e-12)


def test_named_runtime_and_file_win(exported: dict) -> None:
    from common.inference import predict

    paths = exported["paths"]
    folder = paths["onnx"].parent
    assert predict.load_export(paths["onnx"]).source.startswith("onnxruntime ")
    assert predict.load_export(paths["onnx-int8"]).source.startswith("onnxruntime int8 ")
    assert predict.load_export(paths["pt2"]).source.startswith("pt2 ")
    assert predict.load_export(paths["eager"]).source.startswith("eager ")
    assert predict.load_export(paths["pt2"], "onnx").source.startswith("onnxruntime ")
    assert predict.load_export(folder, "onnx-int8").source.startswith("onnxruntime int8 ")


def test_auto_picks_the_fastest_runtime_the_card_measured(
        exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from common.inference import predict

    folder = tmp_path / "export"
    shutil.copytree(exported["paths"]["onnx"].parent, folder)
    card = json.loads((folder / "model_card.json").read_text())

    def set_card(latency: dict[str, float], agreement: dict[str, float]) -> None:
        for rt, row in card["runtimes"].items():
            row["latency"]["median_ms"], row["agreement"] = latency[rt], agreement.get(rt, 1.0)
        (folder / "model_card.json").write_text(json.dumps(card))

    set_card({"eager": 9.0, "pt2": 3.0, "onnx": 5.0, "onnx-int8": 1.0}, {})
    assert predict.pick_runtime(folder, predict.export_files(folder)) == "onnx-int8"
    set_card({"eager": 9.0, "pt2": 3.0, "onnx": 5.0, "onnx-int8": 1.0}, {"onnx-int8": 0.99})
    assert predict.load_export(folder).source.startswith("pt2 ")  # int8 fails the 99.5 % gate
    monkeypatch.setattr(predict, "onnxruntime_available", lambda: False)
    set_card({"eager": 2.0, "pt2": 3.0, "onnx": 1.0, "onnx-int8": 0.5}, {})
    assert predict.load_export(folder).source.startswith("eager ")  # no onnxruntime
    assert predict.load_export(folder / "student.onnx").source.startswith("eager ")
    (folder / "model_card.json").unlink()  # nothing measured: the fixed order
    assert predict.load_export(folder).source.startswith("pt2 ")
    monkeypatch.setattr(predict, "onnxruntime_available", lambda: True)
    assert predict.load_export(folder).source.startswith("onnxruntime ")


def test_bad_exports_are_one_line_errors(exported: dict, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator.cli import main
    from coordinator.export import export_student

    ds = exported["ds"]
    rc = main(["predict", "--model", str(tmp_path / "none.onnx"), "--in", str(ds / "imagesTr"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "none.onnx: export not found" in capsys.readouterr().err
    bare = export_student(exported["model"], tmp_path / "bare", SIZE, {})  # no plan anywhere
    for runtime in ("onnx", "pt2"):
        rc = main(["predict", "--model", str(bare["onnx"]), "--in", str(ds / "imagesTr"),
                   "--out", str(tmp_path / "o"), "--runtime", runtime])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "no preprocessing plan" in err
    rc = main(["predict", "--model", str(bare["onnx"]), "--in", str(ds / "imagesTr"),
               "--out", str(tmp_path / "o"), "--runtime", "onnx-int8"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no onnx-int8 file to predict with (present: onnx, pt2)" in err


def test_exported_plan_is_the_proxy_sets_plan(exported: dict, tmp_path: Path) -> None:
    from coordinator.distill.config import ExperimentConfig
    from coordinator.distill.proxy import load_proxy
    from coordinator.export import student_plan

    site = {"name": "a", "data": "d", "teacher_dir": "t"}
    cfg = ExperimentConfig.model_validate({"name": "x", "out": str(tmp_path), "sites": [site],
                                           "proxy": str(exported["ds"]),
                                           "student": {"size": SIZE}})
    proxy_plan = load_proxy(exported["ds"], SIZE, cfg.proxy_label).plan
    assert proxy_plan is not None and proxy_plan.spacing is not None  # from the fingerprint
    assert student_plan({}, cfg) == proxy_plan.model_dump(mode="json")
    assert student_plan({"plan": PLAN}, cfg) == PLAN  # a plan in the checkpoint wins


def test_auto_skips_an_aoti_package_this_cpu_cannot_run(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A package compiled for x86-64-v3 is the fastest in the card, but on a CPU without AVX2
    ``auto`` falls back to the next measured runtime instead of failing at load."""
    import torch

    from common.inference import predict

    files = {"aoti": tmp_path / "student.aoti.pt2", "pt2": tmp_path / "student.pt2"}
    for f in files.values():
        f.write_bytes(b"x")
    card = {"runtimes": {"aoti": {"latency": {"median_ms": 1.0}, "target": "x86-64-v3"},
                         "pt2": {"latency": {"median_ms": 4.0}}}}
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert predict.pick_runtime(tmp_path, files) == "pt2"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert predict.pick_runtime(tmp_path, files) == "aoti"
