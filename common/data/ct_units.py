"""CT values stored with an offset: read them as Hounsfield units.

A CT file written without its rescale intercept stores ``HU + 1024`` (DICOM's usual
``RescaleIntercept = -1024`` left unapplied, e.g. an unsigned 12-bit export): air is near 24 and
soft tissue near 1064. A plan fitted on such values has a clip window that the HU of every
other site and of the coordinator's proxy never reach, so a teacher trained on them answers
nothing on the proxy and a student scored there sees one flat value.

The rule, per volume and before anything else reads the values (the fingerprint, hence the
plan, and :func:`common.data.native.normalise`): a body CT in HU always holds air or fat, so its
0.5th percentile lies far below -50 HU and its median near soft tissue or air (below 400 HU).
A volume with no value below -50 and a median above 400, whose darkest values become air or fat
once 1024 is taken off (0.5th percentile below 974), is read as ``value - 1024``. Anything
else is kept as it is: other offsets are only reported
(:func:`common.data.fingerprint.ct_units_note`), and an MRI is never touched. The files on disk
stay as they are.
"""

from __future__ import annotations

import numpy as np

STORED_OFFSET = 1024.0
_SAMPLE_STEP = 7  # every 7th voxel: the percentiles of a body volume to well under 1 HU


def stored_offset(vol: np.ndarray) -> float:
    """``STORED_OFFSET`` when ``vol`` (any shape, raw CT values) looks like HU + 1024, else 0."""
    sample = np.asarray(vol).ravel()[::_SAMPLE_STEP]
    if sample.size == 0:
        return 0.0
    low, median = np.percentile(sample, (0.5, 50.0))
    hu_plus_1024 = low >= -50.0 and median > 400.0 and low - STORED_OFFSET < -50.0
    return STORED_OFFSET if hu_plus_1024 else 0.0


def as_hu(vol: np.ndarray) -> np.ndarray:
    """Raw CT values -> HU (float32, same shape): minus :func:`stored_offset`."""
    v = np.asarray(vol, dtype=np.float32)
    off = stored_offset(v)
    return v - np.float32(off) if off else v
