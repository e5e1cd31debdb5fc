"""``site-node import-dicom --in DICOM_DIR --out SITE_DIR``: DICOM into the nnU-Net raw layout.

Every image series under ``DICOM_DIR`` (recursive; :func:`common.data.dicom.read_series`)
becomes one case ``case_NNN``:

* the image is converted by **dcm2niix** (the ``dcm2niix`` Python package ships the binary) into
  ``imagesTr/case_NNN_0000.nii.gz`` (``imagesTs/`` when the case has no ground truth);
* its ground truth, when present, goes to ``labelsTr/case_NNN.nii.gz`` on exactly the image's
  grid: a **DICOM-SEG** referencing the series (segments become label values, by segment name
  across cases), or a **mask series**: an image series in the same frame of reference with the
  same geometry whose description contains ``mask``, ``label`` or ``seg``; non-zero voxels are
  value 1 ("mask" unless the description names it), or an **RTSTRUCT**: each closed planar
  ROI's contours rasterised onto the series' grid (:mod:`common.data.rtstruct`; ROIs become
  label values by ROI name across cases; every ROI, imported or skipped with the reason, is
  listed under ``rois`` in the report). A DICOM-SEG wins over an RTSTRUCT of the same series.
* ``dataset.json`` (modality, label names, ``file_ending``) and ``import_report.json`` /
  stdout: each series with its voxels, spacing, orientation and missing slices, and what became
  of it. A series with missing slices (a gap in the positions) is skipped and reported:
  dcm2niix would stack it at one spacing and misplace every slice after the gap. The report
  holds DICOM UIDs and descriptions, no patient names; it stays on the site.

The label grid is computed from the DICOM headers and mapped onto dcm2niix's output by axis
permutation / flip only; the image dcm2niix wrote is checked voxel for voxel against the
headers' reading, so a disagreement (e.g. a series dcm2niix splits) stops with one line.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.data.dicom import Series, describe, read_series, series_array
from common.data.errors import data_error

_MASK_WORDS = re.compile(r"mask|label|seg", re.IGNORECASE)
AFFINE_TOL_MM = 1e-2


@dataclass
class ImportReport:
    """What the import found and wrote (``import_report.json``)."""

    cases: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    rois: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary."""
        out = [f"{c['case']}: {c['series']} -> {c['image']}"
               + (f" + {c['label']} ({c['label_source']})" if c.get("label") else
                  " (no ground truth)") for c in self.cases]
        out += [f"skipped: {s}" for s in self.skipped]
        out += [f"{r['case']}: ROI {r['roi']!r} {r['status']}" for r in self.rois]
        names = ", ".join(f"{n}={v}" for n, v in self.labels.items()) or "none"
        return [*out, f"labels: {names}"]


def is_mask_series(series: Series) -> bool:
    """An image series that holds a mask (description with mask / label / seg)."""
    return series.is_image and bool(_MASK_WORDS.search(series.description))


def run_dcm2niix(series: Series, work: Path) -> Path:
    """Convert one series with dcm2niix; the .nii.gz it wrote (the largest if it split it)."""
    import dcm2niix

    src, dst = work / "in", work / "out"
    src.mkdir(parents=True)
    dst.mkdir()
    for i, path in enumerate(series.files):
        (src / f"{i:05d}.dcm").symlink_to(path.resolve())
    proc = subprocess.run([str(dcm2niix.bin), "-z", "y", "-b", "n", "-f", "image", "-o",
                           str(dst), str(src)], capture_output=True, text=True, check=False)
    found = sorted(dst.glob("*.nii.gz"), key=lambda p: p.stat().st_size, reverse=True)
    if proc.returncode != 0 or not found:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise data_error(series.files[0], f"dcm2niix could not convert series {series.uid}: "
                                          f"{last[0]}")
    return found[0]


def onto(arr: np.ndarray, affine: np.ndarray, target: Any, source: Path) -> np.ndarray:
    """``arr`` (with RAS ``affine``) on the grid of the nibabel image ``target`` (axis
    permutation / flip only); a grid that differs otherwise is a one-line DataError."""
    import nibabel as nib

    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                           nib.orientations.io_orientation(target.affine))
    moved = nib.orientations.apply_orientation(arr, ornt)
    moved_affine = affine @ nib.orientations.inv_ornt_aff(ornt, arr.shape)
    if moved.shape != target.shape[:3] or not np.allclose(moved_affine, target.affine,
                                                          atol=AFFINE_TOL_MM):
        raise data_error(source, f"grid {moved.shape} does not match the converted image "
                                 f"{tuple(target.shape[:3])} (dcm2niix reoriented or split the "
                                 "series differently); convert this case by hand")
    return np.ascontiguousarray(moved)


def _label_sources(series: list[Series], report: ImportReport
                   ) -> dict[str, tuple[str, Series]]:
    """Image series uid -> ("seg" | "rtstruct" | "mask", the object or mask series) for its
    ground truth; RTSTRUCTs that match no image series (or one that has ground truth already)
    are added to ``report.skipped``."""
    from common.data.dicom_seg import referenced_series
    from common.data.rtstruct import match_series

    out: dict[str, tuple[str, Series]] = {}
    images = [s for s in series if s.is_image and not is_mask_series(s)]
    for seg in (s for s in series if s.modality == "SEG"):
        out[referenced_series(seg.files[0])] = ("seg", seg)
    for rt in (s for s in series if s.modality == "RTSTRUCT"):
        img = match_series(rt.headers[0], [s for s in images if not s.missing])
        if img is None:
            report.skipped.append(describe(rt) + " (RTSTRUCT: none of the complete image series "
                                  "is the one it was drawn on)")
        elif img.uid in out:
            report.skipped.append(describe(rt) + f" (RTSTRUCT: series {img.uid} has "
                                  f"{out[img.uid][0].upper()} ground truth already)")
        else:
            out[img.uid] = ("rtstruct", rt)
    for mask in (s for s in series if is_mask_series(s)):
        frame = str(mask.headers[0].get("FrameOfReferenceUID", ""))
        for img in images:
            same = (str(img.headers[0].get("FrameOfReferenceUID", "")) == frame
                    and img.shape == mask.shape and img.affine is not None
                    and mask.affine is not None and np.allclose(img.affine, mask.affine,
                                                                atol=AFFINE_TOL_MM))
            if same and img.uid not in out:
                out[img.uid] = ("mask", mask)
    return out


def _label_array(kind: str, source: Series, image: Series, report: ImportReport,
                 case: str = "") -> np.ndarray:
    """(columns, rows, slices) uint8 label of ``image`` with values from ``report.labels``."""
    from common.data.dicom_seg import read_seg
    from common.data.rtstruct import read_rtstruct

    if kind == "seg":
        segs, names = read_seg(source.files[0], image)
    elif kind == "rtstruct":
        rois = read_rtstruct(source.headers[0], image)
        segs, names = rois.labels, rois.names
        report.rois += [{"case": case, "rtstruct": source.uid, **r} for r in rois.rois]
    else:
        segs = (series_array(source) != 0).astype(np.uint8)
        names = {1: _mask_name(source.description)}
    out = np.zeros(segs.shape, np.uint8)
    for number, name in names.items():
        value = report.labels.setdefault(name, len(report.labels) + 1)
        out[segs == number] = value
    return out


def _mask_name(description: str) -> str:
    """Label name of a mask series: its description without the mask words, else "mask"."""
    name = _MASK_WORDS.sub("", description).strip(" _-") or "mask"
    return re.sub(r"[^A-Za-z0-9_ -]", "", name)[:40] or "mask"


def _convert_case(case: str, image: Series, label: tuple[str, Series] | None, out: Path,
                  report: ImportReport) -> None:
    """Write one case (image, and label when there is one) and its report entry. An RTSTRUCT
    none of whose ROIs could be filled gives no ground truth (not an empty label)."""
    import nibabel as nib

    drawn = _label_array(*label, image, report, case) if label is not None else None
    if label is not None and label[0] == "rtstruct" and drawn is not None and not drawn.any():
        report.skipped.append(describe(label[1]) + f" (RTSTRUCT: no ROI could be filled on "
                                                   f"{case}; see rois)")
        label = drawn = None
    with tempfile.TemporaryDirectory() as tmp:
        nii = run_dcm2niix(image, Path(tmp))
        img: Any = nib.load(str(nii))
        affine = image.affine
        assert affine is not None  # image series always have a geometry
        mine = onto(series_array(image), affine, img, image.files[0])
        if not np.allclose(mine, np.asarray(img.dataobj, np.float32), atol=1e-3):
            raise data_error(image.files[0], f"dcm2niix and the DICOM headers disagree on the "
                                             f"voxels of series {image.uid}")
        folder = "imagesTr" if label else "imagesTs"
        img_path = out / folder / f"{case}_0000.nii.gz"
        img_path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(img_path))
    entry = {"case": case, "series": describe(image), "series_uid": image.uid,
             "image": str(img_path.relative_to(out))}
    if label is not None and drawn is not None:
        arr = onto(drawn, affine, img, label[1].files[0])
        lab = nib.Nifti1Image(arr.astype(np.uint8), img.affine, header=img.header.copy())
        lab.header.set_data_dtype(np.uint8)
        lab.header.set_slope_inter(1.0, 0.0)
        lab_path = out / "labelsTr" / f"{case}.nii.gz"
        lab_path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(lab, str(lab_path))
        entry.update(label=str(lab_path.relative_to(out)), label_source=describe(label[1]))
    report.cases.append(entry)


def import_dicom(in_dir: Path, out: Path) -> ImportReport:
    """Convert every image series under ``in_dir`` into the nnU-Net layout at ``out``."""
    if not in_dir.is_dir():
        raise data_error(in_dir, "DICOM folder not found")
    if out.exists() and any(out.iterdir()):
        raise data_error(out, "exists and is not empty; choose a new site folder")
    series = read_series(in_dir)
    images = [s for s in series if s.is_image and not is_mask_series(s)]
    if not images:
        raise data_error(in_dir, "no DICOM image series found")
    report = ImportReport()
    report.skipped += [describe(s) + " (slices missing: a volume needs evenly spaced slices; "
                       "export the complete series)" for s in images if s.missing]
    images = [s for s in images if not s.missing]
    if not images:
        raise data_error(in_dir, "no complete DICOM image series: " + "; ".join(report.skipped))
    labels = _label_sources(series, report)
    for i, image in enumerate(images):
        _convert_case(f"case_{i:03d}", image, labels.get(image.uid), out, report)
    _write_dataset_json(out, images, report)
    (out / "import_report.json").write_text(json.dumps(report.__dict__, indent=2) + "\n")
    return report


def _write_dataset_json(out: Path, images: list[Series], report: ImportReport) -> None:
    modalities = sorted({s.modality for s in images})
    meta = {"name": out.name, "channel_names": {"0": "CT" if modalities == ["CT"] else "MRI"},
            "labels": {"background": 0, **report.labels}, "file_ending": ".nii.gz",
            "numTraining": sum(1 for c in report.cases if c.get("label"))}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


def add_import_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``site-node import-dicom``."""
    p.add_argument("--in", dest="in_dir", type=Path, required=True,
                   help="folder of DICOM files (searched recursively)")
    p.add_argument("--out", type=Path, required=True,
                   help="new site data folder (nnU-Net layout: imagesTr/, labelsTr/, "
                        "dataset.json)")


def add_import_command(sub: argparse._SubParsersAction) -> None:
    """Register ``site-node import-dicom``."""
    p = sub.add_parser("import-dicom", help="convert a DICOM folder (image series, DICOM-SEG, "
                                            "RTSTRUCT or mask-series ground truth) into a site "
                                            "data folder")
    add_import_args(p)
    p.set_defaults(func=main_import)


def main_import(args: argparse.Namespace) -> int:
    """``site-node import-dicom``: convert, then print the report."""
    report = import_dicom(args.in_dir, args.out)
    print("\n".join(report.lines()))
    print(f"wrote {args.out} ({len(report.cases)} case(s)); next: site-node check --data "
          f"{args.out}")
    return 0


__all__ = ["ImportReport", "add_import_args", "add_import_command", "import_dicom",
           "is_mask_series", "main_import"]
