"""``site-node check`` prints the plan, the memory estimate and a measured step time with the
projected epoch / total time; DICOM folders are pointed to ``import-dicom``, which the CLI runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from common.data.phantom import make_phantom
from site_node.cli import main


def test_check_prints_plan_memory_and_measured_time(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = make_phantom(tmp_path / "site", "prostate", "A", 3, seed=0, shape=(4, 48, 48))
    rc = main(["check", "--data", str(data), "--out", str(tmp_path / "fp.json"),
               "--model", "tiny_unet", "--size", "32", "--batch-size", "2", "--epochs", "10",
               "--time-steps", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"plan: in-plane spacing [\d.]+ x [\d.]+ mm \(y, x\), slice spacing kept, "
                     r"canvas 32 x 32 px", out)
    assert "plan: normalisation MRI: clip each volume to its p0.5 .. p99.5" in out
    # 3 cases -> split 1 train (val 0.15, test 0.2 of 3 round to 1 each) x 4 slices / batch 2
    assert "run: tiny_unet, 1 training case(s) ~ 4 slices, batch 2: <= 2 steps per epoch, " \
           "10 epochs" in out
    m = re.search(r"time: ([\d.]+) s per training step \(measured, 1 step\(s\) at 2 x 1 x 32 x "
                  r"32\); projected (.+) per epoch, (.+) for 10 epochs", out)
    assert m is not None and float(m.group(1)) > 0
    assert re.search(r"memory: ~\d+ MB of preprocessed volumes \+ \d+ MB of weights", out)


def test_check_on_a_dicom_folder_points_to_import_dicom(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    from tests.common._dicom_data import volume, write_series

    write_series(tmp_path / "dicom" / "t2", volume(), (0.7, 0.8, 2.5))
    rc = main(["check", "--data", str(tmp_path / "dicom"), "--out", str(tmp_path / "fp.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "site-node import-dicom --in DICOM_DIR --out SITE_DIR" in err
    assert len(err.strip().splitlines()) == 1
    rc = main(["import-dicom", "--in", str(tmp_path / "dicom"), "--out", str(tmp_path / "site")])
    out = capsys.readouterr().out
    assert rc == 0 and "case_000: MR series" in out and "next: site-node check" in out
    assert np.asarray((tmp_path / "site" / "imagesTs" / "case_000_0000.nii.gz").exists())
