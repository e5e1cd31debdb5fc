"""Label rules in every layout: ``all`` is the union, unions by value or name, a ``CaseNN``
folder names its target after the values found, undeclared values are refused."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from common.data.errors import DataError
from common.data.fingerprint import compute_fingerprint, plan_for_dataset
from common.data.labels import resolve_target
from common.data.layout import discover_dataset
from common.data.nifti import save_nifti
from common.data.slices import load_volumes

ROOT = Path(__file__).resolve().parents[2]
SP = (3.0, 0.5, 0.5)
SHAPE = (4, 20, 16)
ZONES = {"PZ": 1, "TZ": 2}
ORGANS = {"liver": 1, "spleen": 2, "kidney": 3}


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, SHAPE).astype(np.float32)


def _map(values: dict[str, int]) -> np.ndarray:
    """One block per value, each of a different size: value v covers (v + 1) * 8 voxels."""
    lab = np.zeros(SHAPE, np.uint8)
    for i, v in enumerate(sorted(values.values())):
        lab[1:3, 2 + 5 * i: 2 + 5 * i + v + 1, 4:8] = v
    return lab


def _voxels(values: dict[str, int], chosen: list[int]) -> int:
    lab = _map(values)
    return int(np.isin(lab, chosen).sum())


def _msd(root: Path, values: dict[str, int], declared: dict[str, int] | None = None) -> Path:
    meta_labels = {"0": "background", **{str(v): n for n, v in (declared or values).items()}}
    training = []
    for i in range(2):
        save_nifti(root / "imagesTr" / f"c_{i}.nii.gz", _image(i), SP)
        save_nifti(root / "labelsTr" / f"c_{i}.nii.gz", _map(values), SP, np.uint8)
        training.append({"image": f"./imagesTr/c_{i}.nii.gz", "label": f"./labelsTr/c_{i}.nii.gz"})
    meta = {"name": "zonal", "modality": {"0": "MRI"}, "labels": meta_labels,
            "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _nnunet(root: Path, values: dict[str, int]) -> Path:
    for i in range(2):
        save_nifti(root / "imagesTr" / f"c_{i}_0000.nii.gz", _image(i), SP)
        save_nifti(root / "labelsTr" / f"c_{i}.nii.gz", _map(values), SP, np.uint8)
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **values},
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _cases(root: Path, values: dict[str, int]) -> Path:
    for i in range(2):
        save_nifti(root / f"Case{i:02d}.nii.gz", _image(i), SP)
        save_nifti(root / f"Case{i:02d}_segmentation.nii.gz", _map(values), SP, np.uint8)
    return root


LAYOUTS = {"msd": _msd, "nnunet": _nnunet, "cases": _cases}


def _target_voxels(root: Path, label: str | None) -> int:
    vols = load_volumes(discover_dataset(root), None, 16, label=label)
    assert all(v.native_label is not None for v in vols)
    return int(sum(int(v.native_label.sum()) for v in vols if v.native_label is not None))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("values", [ZONES, ORGANS], ids=["zonal", "multi_organ"])
def test_all_is_the_union_in_every_layout(tmp_path: Path, layout: str,
                                          values: dict[str, int]) -> None:
    root = LAYOUTS[layout](tmp_path / layout, values)
    everything = sorted(values.values())
    assert _target_voxels(root, "all") == 2 * _voxels(values, everything)
    fp = compute_fingerprint(discover_dataset(root), label="all")
    assert fp.target_voxels == 2 * _voxels(values, everything) and fp.target_name == "all"
    by_value = ",".join(str(v) for v in everything[1:])
    assert _target_voxels(root, by_value) == 2 * _voxels(values, everything[1:])
    with pytest.raises(DataError, match="multi-label file|declares"):
        _target_voxels(root, None)  # several values and no choice: refused, never guessed


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_unions_by_name(tmp_path: Path, layout: str) -> None:
    root = LAYOUTS[layout](tmp_path / layout, ORGANS)
    assert _target_voxels(root, "Spleen,kidney") == 2 * _voxels(ORGANS, [2, 3])
    assert _target_voxels(root, "spleen") == 2 * _voxels(ORGANS, [2])
    fp = compute_fingerprint(discover_dataset(root), label="liver,kidney")
    assert (fp.target_labels, fp.target_name) == ([1, 3], "liver+kidney")


def test_a_case_folder_names_its_target_after_the_values_found(tmp_path: Path) -> None:
    zonal = _cases(tmp_path / "zonal", ZONES)
    info = discover_dataset(zonal)
    assert "prostate" not in json.dumps(info.labels).lower()
    fp = compute_fingerprint(info, label="2")
    assert (fp.target_labels, fp.target_name) == ([2], "label 2")
    assert fp.target_voxels == 2 * _voxels(ZONES, [2])  # the TZ only, not "prostate" = 1
    with pytest.raises(DataError, match=r"multi-label file \(values \[1, 2\]\).*--label"):
        compute_fingerprint(info)
    binary = _cases(tmp_path / "binary", {"organ": 2})  # one value, 2: taken, named after it
    fp = compute_fingerprint(discover_dataset(binary))
    assert (fp.target_name, fp.target_voxels) == ("label 2", 2 * _voxels({"o": 2}, [2]))
    plan = plan_for_dataset(discover_dataset(binary), 16)
    assert plan.label_name == "label 2" and "prostate" not in plan.model_dump_json()


def test_values_not_declared_are_refused(tmp_path: Path) -> None:
    root = _msd(tmp_path / "msd", ORGANS, declared={"liver": 1})  # files also hold 2 and 3
    with pytest.raises(DataError, match=r"label values \[2, 3\] are not declared"):
        _target_voxels(root, None)
    with pytest.raises(DataError, match=r"label values \[2, 3\] are not declared"):
        compute_fingerprint(discover_dataset(root))
    with pytest.raises(DataError, match="unknown label '4'"):
        resolve_target({"0": "background", "1": "liver"}, "4", "dataset.json")
    with pytest.raises(DataError, match="unknown label '0'"):
        resolve_target({}, "0", "folder")  # background is never a target


def test_paper_prostate_proxy_label_all_loads_task05_zones(tmp_path: Path) -> None:
    """The shipped paper config's ``proxy_label`` on an MSD Task05-like proxy (PZ=1, TZ=2)."""
    cfg = tomllib.loads((ROOT / "configs" / "paper_prostate.toml").read_text())
    proxy = _msd(tmp_path / "proxy", ZONES)
    plan = plan_for_dataset(discover_dataset(proxy), 16, cfg["proxy_label"])
    assert plan.labels == [1, 2] and plan.label_name == "all"
    vols = load_volumes(discover_dataset(proxy), None, plan.size, plan=plan)
    assert sum(int(v.native_label.sum()) for v in vols if v.native_label is not None) == \
        2 * _voxels(ZONES, [1, 2])
