"""Old (resized-grid) versus new (native-resolution) scores of the same models, in one run.

The old path took every Dice/VOE/HD95 on the network's S x S grid against a resized
ground truth. Now scores are taken on each case's original grid against the untouched label.
This bench scores the same predictions both ways, plus a *perfect* prediction on the network
grid mapped back (what the old path reported as Dice 1.0).

    python -m bench.bench_native_vs_grid --config configs/demo_prostate.toml \
        --out bench/results/native_vs_grid.json

Rows: every site's teacher on its own test split, and the students named by ``--runs`` (run
folders under the experiment's ``out/runs/``) on every site's test split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from common.config import load_config
from common.data.slices import Volume
from common.data.test_split import load_test_split
from common.inference.evaluate import predict_probs, score_native
from common.io import json_safe
from common.metrics import score_volume, summarise
from common.models.checkpoint import load_model
from coordinator.distill.config import ExperimentConfig
from coordinator.distill.proxy import load_proxy

_CPU = torch.device("cpu")


def _perfect(vol: Volume) -> np.ndarray:
    """``(D, 2, S, S)`` one-hot of the resized label: perfect on the network grid."""
    fg = vol.label.astype(np.float32)[:, None]
    return np.concatenate([1.0 - fg, fg], axis=1)


def _probs(model: torch.nn.Module | None, vol: Volume) -> np.ndarray:
    return _perfect(vol) if model is None else predict_probs(model, vol.image, _CPU)


def _score_all(model: torch.nn.Module | None, vols: list[Volume]) -> dict[str, dict]:
    """Mean scores of the same predictions the old way (on the prepared S x S grid against the
    resampled label) and the new way (on each case's original grid against the untouched
    label). ``vols`` are prepared with the model's own plan; ``model`` None: perfect."""
    grid, native = {}, {}
    for v in vols:
        probs = _perfect(v) if model is None else predict_probs(model, v.image, _CPU)
        grid[v.case_id] = score_volume(probs.argmax(1).astype(np.uint8), v.label, v.spacing)
        native[v.case_id] = score_native(probs, v)
    return {"grid": summarise(grid), "native": summarise(native)}


def main(argv: list[str] | None = None) -> None:
    """Score teachers, chosen students and a perfect prediction both ways; write JSON."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--runs", nargs="*", default=["multi_inverse_dice_loss", "student_only"])
    ap.add_argument("--out", type=Path, default=Path("bench/results/native_vs_grid.json"))
    args = ap.parse_args(argv)
    cfg = load_config(args.config, ExperimentConfig)
    size = cfg.student.size
    proxy = load_proxy(cfg.proxy, size, cfg.proxy_label)
    own = {s.name: load_test_split(s.data, s.teacher_dir, size) for s in cfg.sites}
    student = {s.name: load_test_split(s.data, s.teacher_dir, size, proxy.plan)
               for s in cfg.sites}
    rows: dict[str, dict] = {}
    for site in cfg.sites:
        rows[f"perfect@{size}px/{site.name}"] = _score_all(None, own[site.name])
        teacher, _ = load_model(site.teacher_dir / "best.pt")
        rows[f"teacher/{site.name}"] = _score_all(teacher, own[site.name])
    for run in args.runs:
        model, _ = load_model(cfg.out / "runs" / run / "last.pt")
        for site in cfg.sites:
            rows[f"{run}/{site.name}"] = _score_all(model, student[site.name])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(json_safe(rows), indent=1, allow_nan=False))
    for name, r in rows.items():
        print(f"{name:55s} grid Dice {r['grid']['dice_mean']:.3f}  "
              f"native Dice {r['native']['dice_mean']:.3f}  "
              f"grid HD95 {r['grid']['hd95_mean']:.2f}  native HD95 {r['native']['hd95_mean']:.2f}")


if __name__ == "__main__":
    main()
