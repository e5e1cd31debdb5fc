"""``site-node train`` reads each image and each label file exactly once (nnU-Net's order:
fingerprint -> plan -> every case prepared from the file the fingerprint read), with the numbers
of the former read-three-times path unchanged."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import tomli_w

import common.data.nifti as nifti
from common.data.fingerprint import compute_fingerprint
from common.data.layout import discover_dataset
from common.data.plan import plan_from_fingerprint
from site_node.cli import main as site_main
from tests._helpers import count_nifti_reads

#: What this run gave when preparation read every training image three times (fingerprint,
#: card statistics, preparation) and every training label twice: the reads changed, not these
#: (the card's intensity statistics are now the fingerprint's, checked below).
BEFORE_METRICS = [("0", "1.55641", "0.06529"), ("1", "1.55893", "0.06529")]
BEFORE_CARD = {"val_dice": 0.06528622315551505, "best_epoch": 0,
               "dice_mean": 0.07749307228531924, "hd95_mean": 35.19035203533508}
BEFORE_FINGERPRINT = {"cases": {"test": 2, "train": 8, "val": 2}, "modality": "MRI",
                      "train_slices": 128}


def test_train_reads_each_file_once_with_unchanged_numbers(
        tiny_sites: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, out = tiny_sites["site_a"], tmp_path / "run"
    config = tmp_path / "teacher.toml"
    config.write_text(tomli_w.dumps({
        "model": "tiny_unet", "size": 64, "epochs": 2, "batch_size": 8, "patience": 20,
        "device": "cpu", "skip_empty_fraction": 0.6, "max_steps_per_epoch": 3,
        "optim": {"max_lr": 0.005, "base_lr": 1e-5, "step_size_up": 100}}))
    counts = count_nifti_reads(monkeypatch)
    assert site_main(["train", "--data", str(data), "--out", str(out),
                      "--config", str(config)]) == 0
    files = sorted(data.glob("imagesTr/*.nii*")) + sorted(data.glob("labelsTr/*.nii*"))
    assert len(files) == 24
    assert dict(counts) == {f: 1 for f in files}

    with (out / "metrics.csv").open() as fh:
        rows = [(r["epoch"], r["train_loss"], r["val_dice"]) for r in csv.DictReader(fh)]
    assert rows == BEFORE_METRICS
    card = json.loads((out / "teacher.json").read_text())
    assert card["best_epoch"] == BEFORE_CARD["best_epoch"]
    assert card["val_dice"] == pytest.approx(BEFORE_CARD["val_dice"], rel=1e-6)
    assert card["test"]["dice_mean"] == pytest.approx(BEFORE_CARD["dice_mean"], rel=1e-6)
    assert card["test"]["hd95_mean"] == pytest.approx(BEFORE_CARD["hd95_mean"], rel=1e-6)
    fp = card["data_fingerprint"]
    assert {k: fp[k] for k in ("cases", "modality", "train_slices")} == \
        {k: BEFORE_FINGERPRINT[k] for k in ("cases", "modality", "train_slices")}
    # one intensity statistic: the card's is the dataset fingerprint's of the training split,
    # the fingerprint the plan was made from
    split = json.loads((out / "split.json").read_text())
    info = discover_dataset(data)
    ref = compute_fingerprint(info, None, split["train"])
    assert fp["intensity"] == ref.intensity.model_dump()
    assert 300.0 < fp["intensity"]["p50"] < fp["intensity"]["p99_5"]  # raw MRI units (~400)
    plan = json.loads((out / "plan.json").read_text())
    assert plan == json.loads(plan_from_fingerprint(ref, size=64).model_dump_json())
    assert len(list((out / "overlays").glob("*.png"))) == 2  # both test cases, from kept files


def test_read_once_keeps_until_taken(tiny_sites: dict[str, Path],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``keep`` reads once and keeps; ``take`` hands the kept file out and forgets it; a file
    never kept is read by ``take`` (and not kept)."""
    counts = count_nifti_reads(monkeypatch)
    image = sorted(tiny_sites["site_a"].glob("imagesTr/*.nii*"))[0]
    files = nifti.ReadOnce()
    first = files.keep(image, first_channel=True)
    assert files.keep(image, first_channel=True) is first and len(files) == 1
    assert files.take(image, first_channel=True) is first and len(files) == 0
    assert counts[image] == 1
    assert files.take(image, first_channel=True) is not first and len(files) == 0
    assert counts[image] == 2
