"""Dataset fingerprint, planning, label selection and `site-node check`."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.errors import DataError
from common.data.fingerprint import compute_fingerprint, load_fingerprint, save_fingerprint
from common.data.layout import discover_dataset
from common.data.native import normalise
from common.data.plan import Plan, plan_from_fingerprint
from common.data.slices import load_volumes
from tests.common._nifti_cases import LPS_05, RAS_027, Geometry, organ, write_case, write_dataset


def _labels(root: Path) -> list[np.ndarray]:
    return [np.asarray(nib.load(p).dataobj) for p in sorted((root / "labelsTr").iterdir())]


def test_fingerprint_aggregates_geometry_and_labels(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", LPS_05, "01", n=2)
    fp = compute_fingerprint(discover_dataset(root))
    organ_voxels = int(organ(LPS_05.shape(), "LPS").sum())
    assert fp.n_cases == 2 and fp.modality == "MRI" and fp.orientations == {"LPS": 2}
    assert fp.shape_median == [4, 360, 448] and fp.spacing_median == [3.0, 0.5, 0.5]
    assert fp.label_voxels == {"0": 2 * (448 * 360 * 4 - organ_voxels), "1": 2 * organ_voxels}
    assert (fp.target_labels, fp.target_name, fp.target_voxels) == ([1], "organ",
                                                                     2 * organ_voxels)
    assert fp.foreground is not None and 1500 < fp.foreground.p50 < 1900  # organ ~ 1700
    text = save_fingerprint(fp, tmp_path / "fp.json").read_text()
    assert "case_0" not in text and "NaN" not in text
    assert load_fingerprint(tmp_path / "fp.json") == fp


def test_plan_from_fingerprint_defaults(tmp_path: Path) -> None:
    fp = compute_fingerprint(discover_dataset(write_dataset(tmp_path, RAS_027, "01", n=1)))
    plan = plan_from_fingerprint(fp)
    # 448 px > the 384 cap: the median spacing is coarsened by 448/384 so whole slices fit
    assert plan.size == 384 and plan.spacing == pytest.approx((0.27 * 448 / 384,) * 2)
    assert plan.norm == "mri" and plan.labels == [1]
    assert plan_from_fingerprint(fp, size=512).spacing == (0.27, 0.27)  # median: canvas padded
    # fill: the 448 px median field of view fills the canvas, finer or coarser than the median
    assert plan_from_fingerprint(fp, size=512, fill=True).spacing == pytest.approx(
        (0.27 * 448 / 512,) * 2)
    assert plan_from_fingerprint(fp, size=384, fill=True).spacing == plan.spacing
    Plan.model_validate(json.loads(plan.model_dump_json()))  # teacher.json round trip


def test_ct_plan_uses_foreground_percentiles_and_global_mean_sd(tmp_path: Path) -> None:
    fp = compute_fingerprint(discover_dataset(write_dataset(tmp_path, LPS_05, "01", 2, "CT")))
    plan = plan_from_fingerprint(fp, size=64)
    assert plan.norm == "ct" and fp.foreground is not None
    assert plan.ct_clip == (fp.foreground.p0_5, fp.foreground.p99_5)
    assert (plan.ct_mean, plan.ct_std) == (fp.foreground.mean, fp.foreground.std)
    out = normalise(np.array([0.0, fp.foreground.mean, 1e6]), plan)
    lo = (fp.foreground.p0_5 - fp.foreground.mean) / fp.foreground.std
    hi = (fp.foreground.p99_5 - fp.foreground.mean) / fp.foreground.std
    np.testing.assert_allclose(out, [lo, 0.0, hi], rtol=1e-5)


def test_mri_normalisation_clips_outliers(tmp_path: Path) -> None:
    """Hot 65000 voxels in a ~800-1700 volume: z stays bounded, unlike a plain z-score."""
    root = write_dataset(tmp_path, LPS_05, "01", n=1)
    vol = load_volumes(discover_dataset(root), None, 64)[0]
    raw = np.asarray(nib.load(root / "imagesTr" / "case_0_0000.nii.gz").dataobj, np.float64)
    assert (raw.max() - raw.mean()) / raw.std() > 50  # what the old z-score produced
    assert float(np.abs(vol.image).max()) < 4.0


def test_multi_label_trains_on_the_declared_label_only(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, RAS_027, "multi", n=1)
    label = _labels(root)[0]
    with pytest.raises(DataError, match=r"declares 3 foreground labels \(spleen=1, liver=2, "
                                        r"kidney=3\): choose the target"):
        load_volumes(discover_dataset(root), None, 64)
    for choice in ("spleen", "1"):
        vol = load_volumes(discover_dataset(root), None, 64, label=choice)[0]
        assert vol.native_label is not None
        assert int(vol.native_label.sum()) == int((label == 1).sum()) == 54_663
        assert int((label > 0).sum()) > 54_663 + 40 * 30 * 4  # what "any label > 0" took
    both = load_volumes(discover_dataset(root), None, 64, label="liver,kidney")[0]
    assert both.native_label is not None
    assert int(both.native_label.sum()) == int(np.isin(label, [2, 3]).sum())
    with pytest.raises(DataError, match="unknown label 'heart'"):
        load_volumes(discover_dataset(root), None, 64, label="heart")


def test_0_255_masks_keep_working_and_undeclared_multi_values_are_refused(tmp_path: Path
                                                                          ) -> None:
    root = write_dataset(tmp_path / "a", LPS_05, "0255", n=1)
    vol = load_volumes(discover_dataset(root), None, 64)[0]
    assert vol.native_label is not None
    assert int(vol.native_label.sum()) == int((_labels(root)[0] == 255).sum()) > 0
    raw = tmp_path / "b"
    write_case(raw, "case_0", LPS_05, "multi")
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"},
                                                  "file_ending": ".nii.gz"}))
    with pytest.raises(DataError, match=r"multi-label file \(values \[1, 2, 3\]\)"):
        load_volumes(discover_dataset(raw), None, 64)


def test_site_node_check_writes_the_fingerprint_and_refuses_what_training_refuses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from site_node.cli import main

    root = write_dataset(tmp_path / "d", LPS_05, "multi", n=3)
    out = tmp_path / "fp.json"
    assert main(["check", "--data", str(root), "--out", str(out), "--label", "spleen",
                 "--time-steps", "0"]) == 0  # no timed training steps (test_check_sizing.py)
    printed = capsys.readouterr().out
    assert "3 cases, modality MRI" in printed and "orientations: LPS 3" in printed
    assert json.loads(out.read_text())["target_voxels"] == 3 * 54_663
    assert main(["check", "--data", str(root), "--out", str(out)]) == 2  # no label choice
    image, label = write_case(root, "case_0", LPS_05, "multi",
                              label_geo=Geometry("RAS", LPS_05.zooms))
    assert main(["check", "--data", str(root), "--out", str(out), "--label", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(f"geometry differs from label {label}: orientation LPS vs RAS" in e
               for e in err)
    small = write_dataset(tmp_path / "s", LPS_05, "01", n=2)
    assert main(["check", "--data", str(small), "--out", str(out)]) == 2
    assert "only 2 case(s): `site-node train` needs at least 3" in capsys.readouterr().err
    assert json.loads(out.read_text())["n_cases"] == 2  # the fingerprint is still written


def test_plan_cache_is_reused_only_for_the_same_size_and_target(tmp_path: Path) -> None:
    from common.data.fingerprint import plan_for_dataset

    info = discover_dataset(write_dataset(tmp_path / "d", LPS_05, "multi", n=1))
    cache = tmp_path / "plan.json"
    first = plan_for_dataset(info, 64, "spleen", cache=cache)
    cache.write_text(first.model_copy(update={"mri_percentiles": (1.0, 99.0)}).model_dump_json())
    assert plan_for_dataset(info, None, "1", cache=cache).mri_percentiles == (1.0, 99.0)  # reused
    assert plan_for_dataset(info, 32, "spleen", cache=cache).size == 32  # size changed: replanned
    assert plan_for_dataset(info, None, "liver", cache=cache).labels == [2]
    assert Plan.model_validate_json(cache.read_text()).labels == [2]


@pytest.mark.parametrize("style,offset", [("S1", False), ("S2", True)])
def test_ct_stored_with_an_offset_is_read_as_hu_and_named(tmp_path: Path, style: str,
                                                          offset: bool) -> None:
    """The Duke-like spleen style stores HU + 1024 (windowed): its cases are read as HU (the
    fingerprint's statistics, hence the plan's window, are in HU like the Decathlon-like
    style's) and the note says so; the Decathlon-like style (true HU) gets no note."""
    from common.data.fingerprint import ct_units_note
    from common.data.phantom import make_phantom

    root = make_phantom(tmp_path / style, "spleen", style, n_cases=2, seed=3,
                        shape=(8, 32, 32))
    fp = compute_fingerprint(discover_dataset(root))
    note = ct_units_note(fp)
    assert (note is not None) == offset
    assert fp.hu_offset_cases == (2 if offset else 0)
    assert fp.foreground is not None and -50 < fp.foreground.p50 < 200  # soft tissue, in HU
    if offset:
        assert note == (f"{fp.dataset}: 2 of 2 CT case(s) store HU + 1024 (no rescale "
                        "intercept): read as HU, the files are left as they are")


def test_ct_in_another_offset_is_still_warned(tmp_path: Path) -> None:
    """Values that 1024 does not bring to HU (here HU + 3000) are left and keep the warning."""
    from common.data.fingerprint import ct_units_note
    from common.data.phantom import make_phantom

    root = make_phantom(tmp_path / "S1", "spleen", "S1", n_cases=2, seed=3, shape=(8, 32, 32))
    for img in (root / "imagesTr").iterdir():
        nii = nib.load(img)
        nib.save(nib.Nifti1Image(np.asarray(nii.dataobj, np.float32) + 3000.0, nii.affine), img)
    fp = compute_fingerprint(discover_dataset(root))
    note = ct_units_note(fp)
    assert note is not None and "HU + 1024?" in note and fp.hu_offset_cases == 0
    assert f"median {fp.intensity.p50:.0f}" in note and fp.intensity.p50 > 1500
