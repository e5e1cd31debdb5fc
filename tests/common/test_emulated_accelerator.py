"""The benchmark teacher that emulates a site's own accelerator (``emulated_accelerator``)."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

import pytest
import torch

from common.models import build_model
from common.models.emulated import EmulatedAccelerator
from common.models.teachers import TinyUNet


def test_outputs_are_the_tiny_unets() -> None:
    torch.manual_seed(0)
    ref = TinyUNet().eval()
    emu = build_model("emulated_accelerator", seconds_per_slice=0.0).eval()
    emu.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(emu.seg_forward(x).logits, ref.seg_forward(x).logits)


def test_hold_is_per_slice() -> None:
    emu = EmulatedAccelerator(seconds_per_slice=0.001)
    assert emu.hold(3) == pytest.approx(0.003)
    assert EmulatedAccelerator().hold(5) == 0.0


def test_negative_time_is_refused() -> None:
    with pytest.raises(ValueError, match="seconds_per_slice"):
        EmulatedAccelerator(seconds_per_slice=-1.0)


def test_one_site_serves_one_message_at_a_time(tmp_path: Path) -> None:
    """While the site's accelerator lock is held elsewhere, a hold waits for it."""
    lock = tmp_path / "accelerator.lock"
    emu = EmulatedAccelerator(seconds_per_slice=0.001, lock_path=str(lock))
    done = threading.Event()
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        worker = threading.Thread(target=lambda: (emu.hold(1), done.set()))
        worker.start()
        assert not done.wait(0.3), "hold ran while another message held the accelerator"
    worker.join(10)
    assert done.is_set()
