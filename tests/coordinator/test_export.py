"""Student export: torch.export + ONNX (+ eager state, int8) + model card, verified, and the
experiment hook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.models import build_model
from common.models.checkpoint import model_state


def test_export_student_enet_roundtrips(tmp_path: Path) -> None:
    import onnx

    from coordinator.export import export_student

    model = build_model("enet", in_channels=1, num_classes=2).eval()
    card = {"sites": ["site_a", "site_b"], "fusion_weights": {"site_a": 0.6, "site_b": 0.4},
            "bytes_exchanged": 1234}
    paths = export_student(model, tmp_path / "export", 64, card)
    assert {p.name for p in paths.values()} == {"student.pt2", "student.onnx", "model_card.json"}
    x = torch.rand(3, 1, 64, 64)  # a batch size not seen at export: the batch is dynamic
    with torch.no_grad():
        pt2 = torch.export.load(str(paths["pt2"])).module()(x)
        assert pt2.shape == (3, 2, 64, 64)
        assert float((pt2 - model(x)).abs().max()) < 1e-4
    graph = onnx.load(str(paths["onnx"]))
    onnx.checker.check_model(graph)
    assert graph.opset_import[0].version == 17
    assert [i.name for i in graph.graph.input] == ["image"]
    saved = json.loads(paths["card"].read_text())
    assert saved["params"] == sum(p.numel() for p in model.parameters())
    assert saved["input"]["shape"] == [1, 1, 64, 64] and saved["bytes_exchanged"] == 1234
    assert saved["sites"] == ["site_a", "site_b"] and saved["verification"]["onnx_checker"]
    assert saved["created"].endswith("Z") and "fedmtkd_version" in saved
    assert set(saved["runtimes"]) == {"pt2", "onnx"} and saved["default_runtime"] in {"pt2", "onnx"}
    for row in saved["runtimes"].values():  # random inputs: fp32 graphs equal eager fp32
        assert row["precision"] == "fp32" and row["agreement"] == 1.0
        assert row["max_abs_diff"] < 1e-4 and row["latency"]["median_ms"] > 0
    assert saved["verification"]["inputs"] == "random" and "calibration" not in saved
    assert not list((tmp_path / "export").glob(".*.tmp"))  # atomic writes left no temp files


def _experiment(tmp_path: Path) -> tuple[Path, list[dict], object]:
    from common.io import atomic_torch_save
    from coordinator.distill.config import ExperimentConfig

    cfg = ExperimentConfig.model_validate({
        "name": "exp", "out": str(tmp_path / "exp"), "proxy": str(tmp_path / "proxy"),
        "sites": [{"name": n, "data": str(tmp_path), "teacher_dir": str(tmp_path)}
                  for n in ("site_a", "site_b")],
        "student": {"model": "tiny_unet", "size": 32},
        "runs": {"weightings": [{"name": "inverse_dice_loss"}, {"name": "equal"}]}})
    scores = {"dice_mean": 0.5, "voe_mean": 0.4, "hd95_mean": 3.0, "n": 2.0, "dice_std": 0.1}
    rows = [{"run": r, "teachers": ["site_a", "site_b"], "weighting": r[6:],
             "sites": {"site_a": scores, "site_b": scores}, "mean_dice": 0.5}
            for r in ("multi_equal", "multi_inverse_dice_loss")]
    for r in rows:
        folder = cfg.out / "runs" / r["run"]
        model = build_model("tiny_unet", in_channels=1, num_classes=2)
        kw = {"in_channels": 1, "num_classes": 2}
        atomic_torch_save(folder / "last.pt", {**model_state(model, "tiny_unet", kw), "epoch": 2})
        (folder / "metrics.csv").write_text("epoch,total,w0,w1\n0,1.0,0.7,0.3\n1,0.9,0.5,0.5\n")
    return cfg.out, rows, cfg


def _onnx_matches_eager(onnx_path: Path, ckpt: Path) -> None:
    """Run the ONNX graph with onnx's reference evaluator (no onnxruntime needed), batch 2.

    Not used for ENet: the reference MaxPool returns per-plane indices for 1x1 kernels
    (the spec and onnxruntime: global ones), which breaks torch's index arithmetic there.
    """
    from onnx.reference import ReferenceEvaluator

    from common.models.checkpoint import load_model

    model, _ = load_model(ckpt)
    x = torch.rand(2, 1, 32, 32)
    (y,) = ReferenceEvaluator(str(onnx_path)).run(None, {"image": x.numpy()})
    with torch.no_grad():
        assert float((torch.from_numpy(y) - model(x)).abs().max()) < 1e-4


def test_export_best_multi_picks_the_default_weighting(tmp_path: Path) -> None:
    from coordinator.export import export_best_multi, pick_default_multi

    out, rows, cfg = _experiment(tmp_path)
    paths = export_best_multi(out, rows, cfg, bytes_exchanged=42)  # type: ignore[arg-type]
    assert paths is not None and paths["onnx"].parent == out / "export"
    card = json.loads(paths["card"].read_text())
    assert set(card["files"]) == {"eager", "pt2", "onnx"}  # no proxy folder here: no int8
    assert card["run"] == "multi_inverse_dice_loss" and card["architecture"] == "tiny_unet"
    assert card["fusion_weights"] == pytest.approx({"site_a": 0.6, "site_b": 0.4})
    assert card["site_metrics"]["site_b"] == {"dice_mean": 0.5, "voe_mean": 0.4,
                                              "hd95_mean": 3.0, "n": 2.0}
    assert card["bytes_exchanged"] == 42 and card["epochs"] == 3
    assert card["input"]["size"] == 32
    # no proxy folder here: the plan is the default one the proxy set is loaded with
    assert (card["plan"]["size"], card["plan"]["norm"], card["plan"]["spacing"]) == (32, "mri",
                                                                                    None)
    _onnx_matches_eager(paths["onnx"], out / "runs" / "multi_inverse_dice_loss" / "last.pt")
    assert pick_default_multi([{"run": "student_only"}], cfg) is None  # type: ignore[arg-type]
    assert export_best_multi(out, rows[:0], cfg) is None  # type: ignore[arg-type]


def test_export_subcommand_reads_the_run_results(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from coordinator.cli import main

    out, rows, cfg = _experiment(tmp_path)
    for r in rows:
        (out / "runs" / r["run"] / "result.json").write_text(json.dumps(r))
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))  # type: ignore[attr-defined]
    assert main(["export", "--config", str(config)]) == 0
    card = json.loads((out / "export" / "model_card.json").read_text())
    assert card["run"] == "multi_inverse_dice_loss" and "bytes_exchanged" not in card
    assert "[export] multi_inverse_dice_loss" in capsys.readouterr().err  # an INFO log line
    assert main(["export", "--config", str(config), "--out", str(tmp_path / "none")]) == 1


def test_bytes_exchanged_come_from_the_coordinator_log(tmp_path: Path) -> None:
    import numpy as np

    from common.audit.keys import generate_keypair, load_private_key
    from common.audit.log import AuditLog
    from coordinator.export import exchanged_bytes

    assert exchanged_bytes(tmp_path) is None
    priv, _ = generate_keypair(tmp_path / "keys", "coordinator")
    log = AuditLog(tmp_path / "audit" / "coordinator.jsonl", load_private_key(priv))
    log.append(run_id="r", peer="node 1", direction="out", msg_type="query.teacher_outputs",
               arrays={"images": np.zeros((4, 1, 8, 8), np.float32)}, decision="sent")
    log.append(run_id="r", peer="node 1", direction="in", msg_type="query.teacher_outputs",
               arrays={"logits": np.zeros((4, 2, 8, 8), np.float16)}, decision="received")
    got = exchanged_bytes(tmp_path)
    assert got == {"total": 4 * 64 * 4 + 4 * 128 * 2,
                   "by_type": {"query.teacher_outputs": {"out": 1024, "in": 1024}}}


@pytest.mark.slow  # ~8 s idle, ~40 s on the loaded 2-core machine (int8 calibration, timing)
def test_export_lraspp_student_every_runtime(tmp_path: Path) -> None:
    """torchvision's LR-ASPP exports to pt2, ONNX fp32 and int8 (calibrated) like the
    in-project students; the fp32 graphs reproduce the eager logits."""
    import numpy as np

    from coordinator.distill.proxy import ProxySet
    from coordinator.export import export_student

    torch.manual_seed(0)
    model = build_model("lraspp_mobilenet_v3_large", in_channels=1, num_classes=2).eval()
    rng = np.random.default_rng(0)
    ids = [f"r:{i}" for i in range(8)]
    proxy = ProxySet(rng.normal(size=(8, 1, 64, 64)).astype(np.float32),
                     np.zeros((8, 64, 64), np.uint8), ids, ids)
    paths = export_student(model, tmp_path, 64, {}, proxy=proxy)
    card = json.loads(paths["card"].read_text())
    assert set(card["runtimes"]) == {"pt2", "onnx", "onnx-int8"}
    for runtime in ("pt2", "onnx"):
        assert card["runtimes"][runtime]["max_abs_diff"] < 1e-4
    assert card["runtimes"]["onnx-int8"]["precision"] == "int8"
    assert card["params"] == 3_218_020
