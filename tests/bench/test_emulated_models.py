"""The benchmark teacher that emulates a site's own accelerator (``emulated_accelerator``)."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

import pytest
import torch

from bench.emulated_models import EmulatedAccelerator
from common.models import build_model
from common.models.teachers import TinyUNet


def test_outputs_are_the_tiny_unets() -> None:
    torch.manual_seed(0)
    ref = TinyUNet().eval()
    emu = build_model("emulated_accelerator", seconds_per_slice=0.0).eval()
    emu.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(emu.seg_forward(x).logits, ref.seg_forward(x).logits)


def test_same_parameters_as_the_tiny_unet() -> None:
    """The stand-in adds no parameter: exactly the TinyUNet's (118,322 at width 16)."""
    from common.models import count_params

    assert count_params(EmulatedAccelerator()) == count_params(TinyUNet()) == 118_322


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

    def serve() -> None:
        emu.hold(1)
        done.set()

    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        worker = threading.Thread(target=serve)
        worker.start()
        assert not done.wait(0.3), "hold ran while another message held the accelerator"
    worker.join(10)
    assert done.is_set()


def test_register_in_children_registers_the_model_in_a_new_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process started after the call (as ``coordinator simulate`` starts the sites) knows
    ``emulated_accelerator`` having imported only the product's model zoo."""
    import os
    import subprocess
    import sys

    from bench.emulated_models import register_in_children

    monkeypatch.setenv("PYTHONPATH", "")
    hook = register_in_children(tmp_path / "hook")
    assert hook == tmp_path / "hook" / "sitecustomize.py"
    code = "from common.models import MODELS; print('emulated_accelerator' in MODELS)"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "True"


def test_the_product_registry_lacks_the_bench_model() -> None:
    """A fresh process importing only the product has no ``emulated_accelerator``."""
    import subprocess
    import sys

    code = "from common.models import MODELS; print('emulated_accelerator' in MODELS)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"
