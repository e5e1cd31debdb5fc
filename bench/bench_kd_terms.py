"""Benchmark: gradient norm of every weighted KD term, per student, teacher and size.

For each (student, teacher, size) and each AT reduction (``sum``, the default, and the former
``mean``), one forward pass of a random-initialised student on blob slices, targets from a
random-initialised teacher, default KD weights (alpha = beta = 0.1, T = 4), and the L2 norm over
all student parameters of the gradient of each term as it enters the total (Seg, beta*KL,
alpha*AT early/deep, alpha*RC early/deep). Writes JSON.

    OMP_NUM_THREADS=1 python -m bench.bench_kd_terms --out bench/results/kd_terms_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bench.kd_diagnostics import disc_batch, term_gradient_norms, weighted_terms
from common.io import strict_json_dumps
from common.kd.losses import KDLoss
from common.kd.targets import compute_teacher_targets
from common.models import build_model

KW = {"in_channels": 1, "num_classes": 2}


def measure(student_name: str, teacher_name: str, size: int, batch: int,
            seed: int) -> dict[str, dict[str, float]]:
    """``{at_reduce: {term: gradient norm}}`` for one configuration."""
    torch.manual_seed(seed)
    x, y = disc_batch(batch, size, seed)
    targets = compute_teacher_targets(build_model(teacher_name, **KW), x, y)
    student = build_model(student_name, **KW).train()
    out = student.seg_forward(x)
    feats = (out.features[0], out.features[-1])
    return {red: term_gradient_norms(student, weighted_terms(KDLoss(at_reduce=red), out.logits,
                                                             feats, y, targets))
            for red in ("sum", "mean")}


def main() -> None:
    """Parse arguments, measure every configuration, print and write JSON."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--students", nargs="+", default=["enet", "espnet", "mobilenetv2"])
    p.add_argument("--teachers", nargs="+", default=["pspnet_r50", "espnet"])
    p.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 128])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench/results/kd_terms_cpu.json"))
    args = p.parse_args()
    rows = []
    for s_name in args.students:
        for t_name in args.teachers:
            for size in args.sizes:
                norms = measure(s_name, t_name, size, args.batch, args.seed)
                rows.append({"student": s_name, "teacher": t_name, "size": size, **norms})
                print(s_name, t_name, size, json.dumps(norms))
    res = {"device": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "kd": {"alpha": 0.1, "beta": 0.1, "temperature": 4.0}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(strict_json_dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
