"""bench.teacher_padding changes only the pixels outside a volume's field."""

from __future__ import annotations

import numpy as np
import pytest

from bench.teacher_padding import padded
from common.data.slices import Volume


def test_padding_replaced_outside_the_field_only(monkeypatch: pytest.MonkeyPatch) -> None:
    image = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    vol = Volume("c", image, np.zeros((2, 4, 4), np.uint8), (1.0, 1.0, 1.0))
    monkeypatch.setattr(Volume, "extent", property(lambda self: (1, 3, 0, 2)))
    out = padded(vol, -1.5)
    inside = np.zeros((4, 4), bool)
    inside[1:3, 0:2] = True
    assert np.array_equal(out[:, inside], image[:, inside])
    assert (out[:, ~inside] == -1.5).all()
    assert np.array_equal(padded(vol, None), image) and padded(vol, None) is not image
    low = padded(vol, "min")  # the earlier rule: the darkest value inside the field
    assert (low[:, ~inside] == 4.0).all() and np.array_equal(low[:, inside], image[:, inside])
