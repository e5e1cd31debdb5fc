"""Does the canvas padding make a teacher answer nothing? Each scenario teacher on a few cases of
the proxy and of every site, prepared in the teacher's own plan, scored (pooled 2D Dice over
the slices) as prepared ("as is": the plan's pad value, the pipeline's rule) and with the
padding replaced by each volume's normalised minimum (the earlier rule), by -1.7 (about the
darkest value of the teachers' own MRI data) and by 0 (the volume's mean after z-scoring: the
MRI plan's pad value). Only the padding changes.

    python -m bench.teacher_padding --root benchmark_out/prostate --cases 2 \
        --out bench/results/scenarios/prostate_padding.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.data.layout import discover_dataset
from common.data.plan import Plan
from common.data.slices import Volume, load_volumes
from common.io import atomic_write_json
from common.models.checkpoint import load_model

FILLS: dict[str, float | str | None] = {"as is": None, "pad=min": "min", "pad=-1.7": -1.7,
                                        "pad=0": 0.0}


def padded(vol: Volume, fill: float | str | None) -> np.ndarray:
    """``vol.image (D,S,S)`` with the pixels outside its extent set to ``fill`` (None: as
    prepared; "min": the minimum of the field inside the extent)."""
    x = vol.image.astype(np.float32).copy()
    if fill is not None:
        y0, y1, x0, x1 = (int(v) for v in vol.extent)
        outside = np.ones(x.shape[1:], bool)
        outside[y0:y1, x0:x1] = False
        x[:, outside] = x[:, y0:y1, x0:x1].min() if fill == "min" else fill
    return x


def dice(model: torch.nn.Module, vols: list[Volume], fill: float | str | None) -> float:
    """Pooled Dice of ``model``'s argmax over every slice of ``vols``."""
    inter = total = 0
    for v in vols:
        with torch.no_grad():
            out = model(torch.from_numpy(padded(v, fill)[:, None]))
        logits = out.logits if hasattr(out, "logits") else out
        pred = logits.argmax(1).numpy()
        inter += int((pred * v.label).sum())
        total += int(pred.sum() + v.label.sum())
    return 2 * inter / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="benchmark_out/<scenario>")
    ap.add_argument("--cases", type=int, default=2, help="last N cases of each data set")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    sets = sorted(p.name for p in (args.root / "data").iterdir() if p.is_dir())
    for tdir in sorted((args.root / "teachers").iterdir()):
        plan = Plan.model_validate_json((tdir / "plan.json").read_text())
        model, _ = load_model(tdir / "best.pt")
        model.eval()
        for ds in sets:
            info = discover_dataset(args.root / "data" / ds)
            ids = [c.case_id for c in info.cases][-args.cases:]
            vols = load_volumes(info, ids, plan.size, plan=plan)
            row = {"teacher": tdir.name, "data": ds, "extent": [int(v) for v in vols[0].extent],
                   **{k: dice(model, vols, f) for k, f in FILLS.items()}}
            print(row, flush=True)
            rows.append(row)
    atomic_write_json(args.out, {"cases": args.cases, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
