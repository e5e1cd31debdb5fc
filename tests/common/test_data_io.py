"""NIfTI IO, layout discovery, preprocessing, splits and the slice dataset."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.errors import DataError
from common.data.layout import discover_dataset
from common.data.nifti import load_nifti, save_nifti
from common.data.slices import SliceDataset, load_volume, load_volumes
from common.data.split import load_split, save_split, split_cases


def _vol(shape: tuple[int, int, int] = (5, 12, 10), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)


def _label(shape: tuple[int, int, int] = (5, 12, 10)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[1:4, 3:8, 2:6] = 1
    lab[2, 4, 3] = 2
    return lab


def test_round_trip_preserves_array_and_spacing(tmp_path: Path) -> None:
    arr = _vol()
    save_nifti(tmp_path / "a.nii.gz", arr, (3.0, 0.6, 0.8), np.float32)
    back, spacing = load_nifti(tmp_path / "a.nii.gz")
    assert back.shape == (5, 12, 10) and back.dtype == np.float32
    np.testing.assert_array_equal(back, arr)
    assert spacing == (3.0, 0.6, 0.8)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "missing", "nan", "zeros", "2d"])
def test_load_errors_name_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.nii.gz"
    if kind == "garbage":
        path.write_bytes(b"this is not a nifti file at all" * 10)
    elif kind == "truncated":
        save_nifti(path, _vol(), (1.0, 1.0, 1.0))
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    elif kind in {"nan", "zeros"}:
        arr = _vol() if kind == "nan" else np.zeros((5, 12, 10), np.float32)
        arr[0, 0, 0] = np.nan if kind == "nan" else 0.0
        save_nifti(path, arr, (1.0, 1.0, 1.0))
    elif kind == "2d":
        import nibabel as nib

        nib.save(nib.Nifti1Image(np.ones((4, 4), np.float32), np.eye(4)), str(path))
    with pytest.raises(DataError) as info:
        load_nifti(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_4d_single_frame_is_accepted(tmp_path: Path) -> None:
    import nibabel as nib

    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.float32), np.eye(4)), str(path))
    arr, _ = load_nifti(path)
    assert arr.shape == (6, 5, 4)


def test_4d_multichannel_image_reads_channel_0_and_a_4d_label_is_refused(tmp_path: Path) -> None:
    """MSD Task05 style: image (x, y, z, 2) = T2 + ADC, 3D label; the case loads with T2."""
    import nibabel as nib

    t2, adc = _vol(seed=1).transpose(2, 1, 0), _vol(seed=2).transpose(2, 1, 0)  # (x, y, z)
    image = tmp_path / "imagesTr" / "p_0.nii.gz"
    image.parent.mkdir()
    affine = np.diag([0.7, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.stack([t2, adc], -1), affine), str(image))
    with pytest.raises(DataError, match="expected a 3D volume"):
        load_nifti(image)  # a label (or a caller that did not ask for channel 0) is refused
    arr, spacing = load_nifti(image, first_channel=True)
    np.testing.assert_array_equal(arr, _vol(seed=1))
    assert spacing == (2.0, 0.7, 0.7)
    label = tmp_path / "labelsTr" / "p_0.nii.gz"
    save_nifti(label, _label(), (2.0, 0.7, 0.7), np.uint8)
    from common.data.layout import CaseRef
    from common.data.plan import default_plan

    with pytest.raises(DataError, match=r"multi-label file \(values \[1, 2\]\)"):
        load_volume(CaseRef("p_0", image, label), "MRI", 16)  # PZ + TZ need a choice
    vol = load_volume(CaseRef("p_0", image, label), "MRI", 16, plan=default_plan("MRI", 16, [1, 2]))
    assert vol.image.shape == (5, 16, 16) and int(vol.label.sum()) > 0
    assert vol.native_label is not None and int(vol.native_label.sum()) == 3 * 5 * 4


def _write_msd(root: Path, label_shape: tuple[int, int, int] = (5, 12, 10)) -> None:
    for i in range(3):
        save_nifti(root / "imagesTr" / f"spl_{i}.nii.gz", _vol(seed=i), (2.0, 0.7, 0.7))
        save_nifti(
            root / "labelsTr" / f"spl_{i}.nii.gz", _label(label_shape), (2.0, 0.7, 0.7), np.uint8
        )
    meta = {
        "name": "Spleen",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen", "2": "vessel"},
        "training": [
            {"image": f"./imagesTr/spl_{i}.nii.gz", "label": f"./labelsTr/spl_{i}.nii.gz"}
            for i in range(3)
        ],
    }
    (root / "dataset.json").write_text(json.dumps(meta))


def test_discover_msd_layout(tmp_path: Path) -> None:
    _write_msd(tmp_path)
    info = discover_dataset(tmp_path)
    assert info.name == "Spleen" and info.modality == "CT"
    assert info.labels == {"0": "background", "1": "spleen", "2": "vessel"}
    assert [c.case_id for c in info.cases] == ["spl_0", "spl_1", "spl_2"]
    assert info.cases[0].label == tmp_path / "labelsTr" / "spl_0.nii.gz"


def test_discover_nnunet_v2_layout(tmp_path: Path) -> None:
    for name in ("a", "b"):
        save_nifti(tmp_path / "imagesTr" / f"{name}_0000.nii.gz", _vol(), (1.0, 1.0, 1.0))
        save_nifti(tmp_path / "labelsTr" / f"{name}.nii.gz", _label(), (1.0, 1.0, 1.0), np.uint8)
    meta = {
        "channel_names": {"0": "T2"},
        "labels": {"background": 0, "prostate": 1},
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    info = discover_dataset(tmp_path)
    assert info.modality == "MRI" and info.labels == {"0": "background", "1": "prostate"}
    assert [c.case_id for c in info.cases] == ["a", "b"]
    assert info.cases[1].image.name == "b_0000.nii.gz"


def test_discover_multisite_prostate_layout(tmp_path: Path) -> None:
    save_nifti(tmp_path / "Case00.nii.gz", _vol(), (3.0, 0.5, 0.5))
    save_nifti(tmp_path / "Case00_segmentation.nii.gz", _label(), (3.0, 0.5, 0.5), np.uint8)
    save_nifti(tmp_path / "Case01.nii.gz", _vol(), (3.0, 0.5, 0.5))
    save_nifti(tmp_path / "Case01_Segmentation.nii.gz", _label(), (3.0, 0.5, 0.5), np.uint8)
    info = discover_dataset(tmp_path)
    assert info.modality == "MRI" and [c.case_id for c in info.cases] == ["Case00", "Case01"]
    assert info.cases[1].label is not None and info.cases[1].label.name.endswith("ation.nii.gz")


def test_layout_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no known layout") as info:
        discover_dataset(tmp_path)
    assert str(info.value).startswith(str(tmp_path))
    save_nifti(tmp_path / "Case03.nii.gz", _vol(), (1.0, 1.0, 1.0))
    with pytest.raises(DataError, match="no label") as info:
        discover_dataset(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "Case03.nii.gz"))
    msd = tmp_path / "msd"
    _write_msd(msd)
    (msd / "labelsTr" / "spl_1.nii.gz").unlink()
    with pytest.raises(DataError, match="no label") as info:
        discover_dataset(msd)
    assert str(msd / "imagesTr" / "spl_1.nii.gz") in str(info.value)
    (msd / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="invalid dataset.json") as info:
        discover_dataset(msd)
    assert str(info.value).startswith(str(msd / "dataset.json"))


def test_shape_and_spacing_mismatch(tmp_path: Path) -> None:
    _write_msd(tmp_path, label_shape=(5, 12, 9))
    ref = discover_dataset(tmp_path).cases[0]
    with pytest.raises(DataError, match=r"shape \(10, 12, 5\) vs \(9, 12, 5\)") as info:
        load_volume(ref, "CT", 8)  # shapes in the files' (x, y, z) order
    assert str(info.value).startswith(str(ref.image)) and str(ref.label) in str(info.value)
    assert ref.label is not None
    save_nifti(ref.label, _label(), (2.0, 0.7, 0.75), np.uint8)
    with pytest.raises(DataError, match=r"spacing \(0.7, 0.7, 2.0\) vs \(0.75, 0.7, 2.0\) mm"):
        load_volume(ref, "CT", 8)


def test_split_properties() -> None:
    ids = [f"c{i:02d}" for i in range(20)]
    s = split_cases(ids, seed=3)
    parts = [set(s.train), set(s.val), set(s.test)]
    assert all(parts) and set().union(*parts) == set(ids)
    assert sum(len(p) for p in parts) == 20
    assert (len(s.test), len(s.val)) == (4, 3)
    assert split_cases(list(reversed(ids)), seed=3) == s
    assert split_cases(ids, seed=4) != s
    tiny = split_cases(["a", "b", "c"])
    assert len(tiny.train) == len(tiny.val) == len(tiny.test) == 1


def test_split_save_load(tmp_path: Path) -> None:
    s = split_cases([f"c{i}" for i in range(7)])
    save_split(tmp_path / "split.json", s)
    assert load_split(tmp_path / "split.json") == s


def test_slice_dataset(tmp_path: Path) -> None:
    _write_msd(tmp_path)
    info = discover_dataset(tmp_path)
    vols = load_volumes(info, ["spl_2", "spl_0"], 16, label="spleen")
    assert [v.case_id for v in vols] == ["spl_2", "spl_0"]
    v = vols[0]
    assert v.image.shape == (5, 16, 16) and v.image.dtype == np.float32
    assert v.label.dtype == np.uint8 and set(np.unique(v.label)) == {0, 1}
    # fit into 16 px keeping the aspect: 12 x 10 -> 16 x 13, padded to 16 x 16
    assert v.spacing == pytest.approx((2.0, 0.7 * 12 / 16, 0.7 * 10 / 13), abs=1e-6)
    assert v.native_label is not None and int(v.native_label.sum()) == 3 * 5 * 4 - 1  # 2 != 1
    ds = SliceDataset(vols)
    assert len(ds) == 10
    item = ds[3]
    assert item["image"].shape == (1, 16, 16) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (16, 16) and item["mask"].dtype == torch.int64
    assert set(item["mask"].unique().tolist()) <= {0, 1}
    assert (item["case"], item["z"], item["index"]) == ("spl_2", 3, 3)
    assert len(SliceDataset(vols, skip_empty_fraction=1.0)) == 6  # 2 x 3 organ slices
    assert len(SliceDataset(vols, skip_empty_fraction=0.5)) == 8
    with pytest.raises(DataError, match="unknown case"):
        load_volumes(info, ["nope"], 16)


def _huge_claim(path: Path) -> Path:
    """A ~1 MB .nii.gz whose header claims 1200 x 1200 x 600 uint8 voxels (864 MB): small
    enough on disk to pass the compression-ratio check, cheap only if no voxel is read."""
    import os

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((1200, 1200, 600))
    header.set_data_dtype(np.uint8)
    header.set_zooms((0.7, 0.7, 2.0))
    header.set_sform(np.diag([0.7, 0.7, 2.0, 1.0]), code=1)
    header.set_qform(np.diag([0.7, 0.7, 2.0, 1.0]), code=1)
    raw = header.binaryblock + b"\0" * 4 + os.urandom(1_000_000)
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    return path


def test_both_headers_are_checked_before_any_voxel_is_read(tmp_path: Path) -> None:
    import tracemalloc

    from common.data.layout import CaseRef

    image = tmp_path / "img.nii.gz"
    save_nifti(image, _vol(), (2.0, 0.7, 0.7))
    label = _huge_claim(tmp_path / "lab.nii.gz")
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"geometry differs from label .*shape \(10, 12, 5\) "
                                             r"vs \(1200, 1200, 600\)"):
            load_volume(CaseRef("c", image, label), "MRI", 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # reading the claimed label would allocate >= 864 MB
    from common.inference.evaluate_folder import CasePair, score_pair

    with pytest.raises(DataError, match=r"vs \(1200, 1200, 600\)"):
        score_pair(CasePair("c", image, label), [1])
