"""DICOM-SEG out and in (highdicom): a mask on a source series' grid <-> a SEG object.

:func:`write_seg` writes one binary segment per label value (name and display colour), each
frame referencing its source slice (SOP instance), in the source series' study and frame of
reference, so Slicer, OHIF and PACS viewers overlay it on the series. :func:`read_seg` maps a
SEG back onto a source series' (column, row, slice) array (segment numbers as values).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.dicom import Series
from common.data.errors import data_error

DEFAULT_COLOURS = ((230, 60, 60), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180))
MANUFACTURER = "fedmtkd"


def _source_datasets(series: Series) -> list:
    """The series' headers (pixel data is not needed to reference them)."""
    return list(series.headers)


def _description(number: int, name: str, colour: tuple[int, int, int]):  # type: ignore[no-untyped-def]
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:64],
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Organ,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="fedmtkd", version="1", family=codes.cid7162.ArtificialIntelligence),
        display_color=hd.color.CIELabColor.from_rgb(*colour))


def write_seg(mask: np.ndarray, series: Series, out: Path, names: dict[int, str],
              colours: dict[int, tuple[int, int, int]] | None = None) -> Path:
    """Write ``mask`` (columns, rows, slices) uint8 as a DICOM-SEG referencing ``series``.

    ``names``: label value -> segment label (values absent from ``names`` are refused);
    ``colours``: value -> RGB (default :data:`DEFAULT_COLOURS`). Returns ``out``.
    """
    import highdicom as hd

    arr = np.asarray(mask)
    if arr.shape != series.shape:
        raise data_error(out, f"mask shape {arr.shape} != source series {series.shape}")
    values = sorted(names)
    unknown = sorted(set(int(v) for v in np.unique(arr)) - {0, *values})
    if unknown:
        raise data_error(out, f"mask values {unknown} have no segment name")
    pixels = np.stack([arr == v for v in values], axis=-1).transpose(2, 1, 0, 3)  # (k, r, c, S)
    descriptions = [_description(i + 1, names[v], (colours or {}).get(
        v, DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)])) for i, v in enumerate(values)]
    seg = hd.seg.Segmentation(
        source_images=_source_datasets(series), pixel_array=pixels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name="fedmtkd student", software_versions="1",
        device_serial_number="0", omit_empty_frames=False,
        series_description=f"fedmtkd {', '.join(names[v] for v in values)}"[:64])
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(out))
    return out


def read_seg(path: Path, series: Series) -> tuple[np.ndarray, dict[int, str]]:
    """A SEG on ``series``' grid: ((columns, rows, slices) uint8 of segment numbers,
    segment number -> label). Refuses a SEG that references none of the series' slices."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    if not referenced & set(series.sop_uids):
        raise data_error(path, f"DICOM-SEG references no slice of series {series.uid}")
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=series.sop_uids, combine_segments=True,
        assert_missing_frames_are_empty=True, skip_overlap_checks=True)
    names = {int(n): str(seg.get_segment_description(n).segment_label)
             for n in seg.segment_numbers}
    return np.asarray(pixels, np.uint8).transpose(2, 1, 0), names


def referenced_series(path: Path) -> str:
    """The SeriesInstanceUID a SEG was drawn on (its first referenced series)."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    uids = seg.get_source_image_uids()
    if not uids:
        raise data_error(path, "DICOM-SEG references no source series")
    return str(uids[0][1])


__all__ = ["read_seg", "referenced_series", "write_seg"]
