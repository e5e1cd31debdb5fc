"""Teachers queried at the student's grid, with and without serving in their own plan.

For each student size, every site's teacher answers the proxy slices twice: *unbridged* (the
slices go to the teacher on the student's grid, the earlier behaviour) and *bridged* (the site
resamples them to its teacher's plan and maps the outputs back,
:func:`common.kd.plan_bridge.bridged_teacher_outputs`). Each answer is scored against the proxy
labels on the student's grid (pooled Dice of the teacher's own argmax), next to the teacher's
validation Dice from ``teacher.json``.

    python -m bench.bench_teacher_plans --config configs/demo_prostate.toml --sizes 64 256 \
        --out bench/results/teacher_plans.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common.config import load_config
from common.data.test_split import site_plan
from common.io import json_safe
from common.kd.plan_bridge import bridged_teacher_outputs
from common.kd.teacher_outputs import teacher_outputs
from common.models.checkpoint import load_model
from coordinator.distill.config import ExperimentConfig, SiteSpec
from coordinator.distill.proxy import ProxySet, load_proxy
from coordinator.distill.teacher_check import proxy_dice

_CPU = torch.device("cpu")


def _row(site: SiteSpec, proxy: ProxySet) -> dict[str, float]:
    """Proxy Dice of one teacher unbridged and bridged, with the seconds each took."""
    model, _ = load_model(site.teacher_dir / "best.pt")
    card = json.loads((site.teacher_dir / "teacher.json").read_text())
    out: dict[str, float] = {"val_dice": card.get("val_dice") or float("nan")}
    t0 = time.perf_counter()
    plain = teacher_outputs(model, proxy.images, proxy.masks, _CPU)
    out["unbridged_s"] = time.perf_counter() - t0
    out["unbridged_dice"] = proxy_dice(plain.logits[0].float().numpy(), proxy.masks)
    t0 = time.perf_counter()
    bridged = bridged_teacher_outputs(model, proxy.images, proxy.masks, _CPU, proxy.plan,
                                      site_plan(site.teacher_dir))
    out["bridged_s"] = time.perf_counter() - t0
    out["bridged_dice"] = proxy_dice(bridged.logits[0].float().numpy(), proxy.masks)
    return out


def main(argv: list[str] | None = None) -> None:
    """Both answers of every teacher at every ``--sizes``; JSON plus a printed table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--out", type=Path, default=Path("bench/results/teacher_plans.json"))
    args = ap.parse_args(argv)
    cfg = load_config(args.config, ExperimentConfig)
    rows = {}
    for size in args.sizes:
        proxy = load_proxy(cfg.proxy, size, cfg.proxy_label)
        for site in cfg.sites:
            rows[f"{site.name}@{size}"] = r = _row(site, proxy)
            print(f"{site.name} student grid {size:4d} px: val Dice {r['val_dice']:.3f}  "
                  f"unbridged proxy Dice {r['unbridged_dice']:.3f} ({r['unbridged_s']:.0f} s)  "
                  f"bridged {r['bridged_dice']:.3f} ({r['bridged_s']:.0f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(json_safe(rows), indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
