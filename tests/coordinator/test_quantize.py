"""int8 export: calibrated on the coordinator's proxy slices only, and close to fp32."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest


def _proxy(n: int = 10):  # type: ignore[no-untyped-def]
    from coordinator.distill.proxy import ProxySet

    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, 1, 16, 16)).astype(np.float32)
    ids = [f"proxy_case:{z}" for z in range(n)]
    return ProxySet(images, np.zeros((n, 16, 16), np.uint8), ids, [f"h{z}" for z in range(n)])


def test_reader_takes_only_the_proxy_set() -> None:
    from coordinator.quantize import ProxyCalibrationReader

    proxy = _proxy()
    with pytest.raises(TypeError, match="proxy set"):
        ProxyCalibrationReader(proxy.images)  # type: ignore[arg-type]  # bare (site?) arrays
    reader = ProxyCalibrationReader(proxy, "image", n=4, batch=3)
    assert reader.source == "proxy" and reader.digest == proxy.digest
    assert reader.indices.tolist() == [0, 3, 6, 9]  # evenly spread over the 10 slices
    got = [reader.get_next() for _ in range(3)]
    assert got[2] is None and got[0] is not None and got[1] is not None
    np.testing.assert_array_equal(np.concatenate([got[0]["image"], got[1]["image"]]),
                                  proxy.images[[0, 3, 6, 9]])
    reader.rewind()
    first = reader.get_next()
    assert first is not None and first["image"].shape == (3, 1, 16, 16)


def test_int8_export_calibrates_on_the_proxy_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """export_best_multi loads the proxy folder (not a site's data) and calibrates on it."""
    import coordinator.quantize as quantize
    from coordinator.distill.proxy import load_proxy
    from coordinator.export import export_best_multi
    from tests.common._predict_data import write_dataset
    from tests.coordinator.test_export import _experiment

    out, rows, cfg = _experiment(tmp_path)
    write_dataset(tmp_path / "proxy")  # cfg.proxy; the sites' data folder is tmp_path itself
    seen: list[object] = []
    real = quantize.ProxyCalibrationReader.__init__

    def spy(self, proxy, *a, **kw):  # type: ignore[no-untyped-def]
        seen.append(proxy)
        real(self, proxy, *a, **kw)

    monkeypatch.setattr(quantize.ProxyCalibrationReader, "__init__", spy)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    paths = export_best_multi(out, rows, cfg)  # type: ignore[arg-type]
    # onnxruntime's root-logger warnings were muted and left no handler behind
    assert root.handlers == handlers and root.level == level
    assert paths is not None and paths["onnx-int8"].name == "student.int8.onnx"
    want = load_proxy(tmp_path / "proxy", 32, cfg.proxy_label)  # type: ignore[attr-defined]
    assert len(seen) == 1 and seen[0].digest == want.digest  # type: ignore[attr-defined]
    assert {s.split(":")[0] for s in seen[0].slice_ids} == {"lps01", "ras02"}  # type: ignore
    card = json.loads(paths["card"].read_text())
    assert card["calibration"]["source"] == "proxy"
    assert card["calibration"]["proxy_digest"] == want.digest
    assert card["calibration"]["slices"] == len(want)  # 12 slices < 64: all of them
    assert card["runtimes"]["onnx-int8"]["precision"] == "int8"
    assert card["verification"]["inputs"] == "proxy slices"
    for rt in ("eager", "pt2", "onnx"):  # fp32 runtimes on proxy inputs
        assert card["runtimes"][rt]["max_abs_diff"] < 1e-4


def test_quiet_root_logger_mutes_and_restores() -> None:
    from coordinator.quantize import quiet_root_logger

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.seen.append(record.getMessage())

    root, sink = logging.getLogger(), Collect()
    root.addHandler(sink)
    try:
        handlers, level = list(root.handlers), root.level
        with quiet_root_logger():
            logging.warning("muted")  # what onnxruntime.quantization does
        assert root.handlers == handlers and root.level == level
        logging.warning("heard")
    finally:
        root.removeHandler(sink)
    assert sink.seen == ["heard"]
