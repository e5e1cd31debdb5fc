"""The AOTInductor runtime: skipped with one logged line when it cannot be built, refused on a
CPU that cannot run it, and (slow: a C++ compilation) exported, verified, measured in the
model card and used by ``predict``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.models.base import SegModel, SegOutput


class _Tiny(SegModel):
    """Two convolutions (the smallest graph to compile): ``(B, 1, S, S) -> (B, 2, S, S)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 2, 1)

    def seg_forward(self, x: torch.Tensor) -> SegOutput:
        f = torch.relu(self.a(x))
        return SegOutput(self.b(f), (f, f))


def test_no_compiler_skips_the_package_with_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from coordinator import aoti
    from coordinator.export import export_student

    monkeypatch.setattr(aoti, "cxx_compiler", lambda: None)
    (tmp_path / "student.aoti.pt2").write_bytes(b"a former export's package")  # now stale
    with caplog.at_level(logging.WARNING, logger="coordinator.aoti"):
        paths = export_student(_Tiny().eval(), tmp_path, 16, {}, aoti=True)
    assert "aoti" not in paths and not (tmp_path / "student.aoti.pt2").exists()
    mine = [r for r in caplog.records if r.name == "coordinator.aoti"]
    assert len(mine) == 1 and "no C++ compiler" in mine[0].getMessage()
    card = json.loads(paths["card"].read_text())
    assert set(card["runtimes"]) == {"pt2", "onnx"}


def test_failed_compilation_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    from coordinator import aoti

    def boom(*_: object) -> None:
        raise RuntimeError("C++ compile error\nmore lines")

    monkeypatch.setattr(aoti, "cxx_compiler", lambda: "/usr/bin/c++")
    monkeypatch.setattr(aoti, "_compile", boom)
    with caplog.at_level(logging.WARNING, logger="coordinator.aoti"):
        got = aoti.compile_aoti(tmp_path / "s.pt2", tmp_path / "s.aoti.pt2", _Tiny(),
                                torch.zeros(2, 1, 16, 16))
    assert got is None and "RuntimeError: C++ compile error" in caplog.text
    assert "more lines" not in caplog.text


def test_portable_target_options() -> None:
    import platform

    from coordinator.aoti import inductor_configs

    assert inductor_configs(None) == {}
    if platform.machine() == "x86_64":
        assert inductor_configs("x86-64-v3") == {"cpp.march": "x86-64-v3", "cpp.simdlen": 256}


def test_loader_refuses_a_cpu_without_the_target(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from common.inference import runtimes

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    with pytest.raises(RuntimeError, match="compiled for x86-64-v3, which this CPU"):
        runtimes.load_aoti(tmp_path / "student.aoti.pt2", "x86-64-v3")
    (tmp_path / "model_card.json").write_text(
        json.dumps({"runtimes": {"aoti": {"target": "x86-64-v3"}}}))
    assert runtimes.aoti_target(tmp_path / "student.aoti.pt2") == "x86-64-v3"


def test_aoti_file_is_its_own_runtime() -> None:
    from common.inference.predict import runtime_of
    from common.inference.runtimes import FILES

    assert runtime_of(Path(FILES["aoti"])) == "aoti" and runtime_of(Path("a.pt2")) == "pt2"


@pytest.mark.slow
def test_aoti_package_exports_and_predicts(tmp_path: Path) -> None:
    """~30-70 s on 2 cores: one C++ compilation of a two-conv graph at 32 px."""
    import nibabel as nib

    from common.inference import predict
    from coordinator.aoti import cxx_compiler
    from coordinator.export import export_student
    from tests.common._predict_data import PLAN, SIZE, write_dataset

    if cxx_compiler() is None:
        pytest.skip("no C++ compiler")
    model = _Tiny().eval()
    paths = export_student(model, tmp_path / "export", SIZE, {}, plan=PLAN, aoti=True)
    card = json.loads(paths["card"].read_text())
    row = card["runtimes"]["aoti"]
    assert row["precision"] == "fp32" and row["agreement"] == 1.0 and row["max_abs_diff"] < 1e-4
    assert row["target"] in ("x86-64-v3", "native") and row["latency"]["median_ms"] > 0
    assert card["files"]["aoti"] == "student.aoti.pt2"
    x = torch.randn(5, 1, SIZE, SIZE)  # a batch not seen at export: the batch stays dynamic
    run = predict.load_export(paths["aoti"]).probs
    assert predict.load_export(paths["onnx"].parent, "aoti").source.startswith("aoti ")
    with torch.no_grad():
        want = torch.softmax(model(x), dim=1).numpy()
    np.testing.assert_allclose(run(x[:, 0].numpy()), want, atol=1e-5)
    ds = write_dataset(tmp_path / "ds")
    masks = {}
    for runtime in ("aoti", "pt2"):
        pred = predict.load_export(paths["card"].parent, runtime)
        out = predict.predict_folder(pred, ds / "imagesTr", tmp_path / runtime)
        masks[runtime] = [np.asarray(nib.load(str(p)).dataobj) for p in out]
    assert all(np.array_equal(a, b) for a, b in zip(masks["aoti"], masks["pt2"], strict=True))
