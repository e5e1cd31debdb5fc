"""Discover a dataset folder: MSD / nnU-Net raw layout or the multi-site prostate layout.

Supported layouts:

* MSD / nnU-Net raw: ``dataset.json`` + ``imagesTr/`` + ``labelsTr/``. Either an MSD
  ``"training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]`` list, or
  nnU-Net v2 style (no list) where images are ``x_0000.nii.gz`` and labels ``x.nii.gz``.
  Modality from ``"modality"`` or ``"channel_names"`` (channel ``"0"``); default MRI.
* Multi-site prostate: one folder of ``CaseNN.nii.gz`` + ``CaseNN_segmentation.nii.gz``
  (``_Segmentation`` accepted). Modality MRI. No label names are declared: the target is
  named after the label values found, and a file with several values needs ``--label``
  (:mod:`common.data.labels`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.data.errors import DataError, data_error, utf8_name

_CASE_RE = re.compile(r"^(Case\d+)(_[sS]egmentation)?\.nii(\.gz)?$")
_NII_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class CaseRef:
    """One case: id, image file and (optional) label file."""

    case_id: str
    image: Path
    label: Path | None


@dataclass
class DatasetInfo:
    """A discovered dataset. ``modality`` is ``"MRI"`` or ``"CT"``; labels map value -> name."""

    name: str
    modality: str
    labels: dict[str, str] = field(default_factory=dict)
    cases: list[CaseRef] = field(default_factory=list)


def discover_dataset(root: Path | str) -> DatasetInfo:
    """Detect the layout of ``root`` and list its cases (sorted by case id)."""
    root = Path(root)
    if not root.is_dir():
        raise data_error(root, "dataset folder not found")
    _check_names(root)
    if (root / "dataset.json").is_file():
        return _checked(root, _discover_msd(root))
    if any(_CASE_RE.match(p.name) for p in root.iterdir()):
        return _checked(root, _discover_prostate_sites(root))
    from common.data.dicom import DICOM_HINT, has_dicom

    if has_dicom(root):
        raise data_error(root, f"matches no known layout: {DICOM_HINT}")
    raise data_error(
        root,
        "matches no known layout (need dataset.json + imagesTr/ + labelsTr/, "
        "or CaseNN.nii.gz + CaseNN_segmentation.nii.gz)",
    )


def _check_names(root: Path) -> None:
    """Refuse a file name that is not valid UTF-8 in the folders discovery scans (Python
    would carry it as surrogate escapes into case ids, logs and plots)."""
    for folder in (root, root / "imagesTr", root / "labelsTr"):
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            utf8_name(entry)


def _checked(root: Path, info: DatasetInfo) -> DatasetInfo:
    """Refuse duplicate case ids and case files (after symlinks) outside ``root``."""
    seen: set[str] = set()
    inside = root.resolve()
    for case in info.cases:
        if case.case_id in seen:
            raise data_error(root / "dataset.json" if (root / "dataset.json").is_file()
                             else root, f"duplicate case id {case.case_id!r}")
        seen.add(case.case_id)
        for path in (case.image, case.label):
            if path is not None and not path.resolve().is_relative_to(inside):
                raise data_error(path, f"resolves to {path.resolve()}, outside the data "
                                       f"folder {inside} (paths and symlinks must stay in it)")
    return info


def _read_json(path: Path) -> dict[str, Any]:
    """Parse ``dataset.json`` into a dict; anything else is a DataError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise data_error(path, f"invalid dataset.json: {exc}") from exc
    if not isinstance(data, dict):
        raise data_error(path, "invalid dataset.json: top level must be an object")
    return data


def _modality(meta: dict[str, Any], path: Path) -> str:
    """``"CT"`` or ``"MRI"`` from the ``modality`` / ``channel_names`` block (default MRI)."""
    block = meta.get("modality", meta.get("channel_names"))
    if block is None:
        return "MRI"
    if isinstance(block, dict):
        block = block.get("0", next(iter(block.values()), "MRI"))
    if not isinstance(block, str):
        raise data_error(path, f"invalid dataset.json: bad modality {block!r}")
    return "CT" if block.strip().upper() == "CT" else "MRI"


def _labels(meta: dict[str, Any], path: Path) -> dict[str, str]:
    """Normalise MSD ``{"0": "background"}`` and nnU-Net v2 ``{"background": 0}`` to str->str."""
    raw = meta.get("labels", {})
    if not isinstance(raw, dict):
        raise data_error(path, "invalid dataset.json: 'labels' must be an object")
    if all(isinstance(v, int) for v in raw.values()):
        return {str(v): str(k) for k, v in raw.items()}
    return {str(k): str(v) for k, v in raw.items()}


def _discover_msd(root: Path) -> DatasetInfo:
    """MSD / nnU-Net raw layout."""
    json_path = root / "dataset.json"
    meta = _read_json(json_path)
    training = meta.get("training")
    if training is not None and not isinstance(training, list):
        raise data_error(json_path, "invalid dataset.json: 'training' must be a list")
    if training:
        cases = [_msd_entry(root, json_path, e) for e in training]
    else:
        cases = _scan_images(root, str(meta.get("file_ending", ".nii.gz")))
    if not cases:
        raise data_error(root / "imagesTr", "no training images found")
    name = str(meta.get("name", root.name))
    info = DatasetInfo(name, _modality(meta, json_path), _labels(meta, json_path), cases)
    info.cases.sort(key=lambda c: c.case_id)
    return info


def _msd_entry(root: Path, json_path: Path, entry: Any) -> CaseRef:
    """One ``{"image": ..., "label": ...}`` entry of an MSD ``training`` list."""
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
        raise data_error(json_path, f"invalid dataset.json: bad training entry {entry!r}")
    image = root / entry["image"]
    if not image.is_file():
        alt = _with_channel_suffix(image)
        if not alt.is_file():
            raise data_error(image, "image listed in dataset.json not found")
        image = alt
    label = root / str(entry.get("label", f"labelsTr/{Path(entry['image']).name}"))
    if not label.is_file():
        raise data_error(image, f"image has no label (expected {label})")
    return CaseRef(_strip_ext(label.name), image, label)


def _with_channel_suffix(image: Path) -> Path:
    """``x.nii.gz`` -> ``x_0000.nii.gz`` (nnU-Net v2 naming of the first channel)."""
    return image.with_name(_strip_ext(image.name) + "_0000" + _ext(image.name))


def _scan_images(root: Path, ending: str) -> list[CaseRef]:
    """nnU-Net v2 style: ``imagesTr/x_0000<ending>`` paired with ``labelsTr/x<ending>``."""
    images_dir = root / "imagesTr"
    if not images_dir.is_dir():
        raise data_error(images_dir, "imagesTr/ folder not found")
    cases = []
    for image in sorted(images_dir.iterdir()):
        if image.name.startswith(".") or not image.name.endswith(ending):
            continue
        stem = image.name[: -len(ending)]
        if re.search(r"_\d{4}$", stem):
            if not stem.endswith("_0000"):
                continue  # extra channels of a multi-channel case: only channel 0 is used
            stem = stem[:-5]
        label = root / "labelsTr" / (stem + ending)
        if not label.is_file():
            raise data_error(image, f"image has no label (expected {label})")
        cases.append(CaseRef(stem, image, label))
    return cases


def _discover_prostate_sites(root: Path) -> DatasetInfo:
    """Multi-site prostate layout: ``CaseNN.nii.gz`` + ``CaseNN_segmentation.nii.gz``."""
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        m = _CASE_RE.match(p.name)
        if m:
            (labels if m.group(2) else images)[m.group(1)] = p
    for case_id in sorted(set(labels) - set(images)):
        raise data_error(labels[case_id], "label has no matching image")
    cases = []
    for case_id, image in sorted(images.items()):
        if case_id not in labels:
            raise data_error(image, f"image has no label (expected {case_id}_segmentation.nii.gz)")
        cases.append(CaseRef(case_id, image, labels[case_id]))
    # Nothing is declared: the target is named after the values found in the label files and a
    # file with several values needs --label (common.data.labels); never called an organ here.
    return DatasetInfo(root.name, "MRI", {"0": "background"}, cases)


def _ext(name: str) -> str:
    """The NIfTI extension of ``name`` (``.nii.gz`` or ``.nii``), else the last suffix."""
    for suffix in _NII_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def _strip_ext(name: str) -> str:
    """``x.nii.gz`` -> ``x``."""
    ext = _ext(name)
    return name[: -len(ext)] if ext else name


__all__ = ["CaseRef", "DataError", "DatasetInfo", "discover_dataset"]
