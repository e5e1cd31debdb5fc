"""Every message starts a new ClientApp process under Flower's deployment engine, so
the query path must not import what it does not run: smp, timm and torchvision take ~2 s of
CPU per message on top of torch and are needed only to build smp/torchvision teachers."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("segmentation_models_pytorch", "timm", "torchvision", "albumentations")


def test_the_query_path_imports_no_heavy_model_library() -> None:
    code = (
        "import sys, torch\n"
        "import site_node.app, common.kd.plan_bridge, common.models.checkpoint, common.training\n"
        "from common.models import build_model\n"
        "m = build_model('tiny_unet'); m.seg_forward(torch.zeros(1, 1, 32, 32))\n"
        f"print(sorted(h for h in {HEAVY!r} if h in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_seg_loss_still_builds_smps_losses() -> None:
    from common.kd.losses import build_loss

    loss = build_loss("seg")
    assert type(loss.dice).__module__.startswith("segmentation_models_pytorch")
