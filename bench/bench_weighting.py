"""The per-sample teacher weighting alone: current vs former implementation, paired.

The default rule (``inverse_dice_loss``, hard-Dice fallback on slices without foreground) on 3
teachers' probabilities, half the slices label-free. Former: ``argmax`` over the class axis and
the fallback computed for every slice (:func:`bench.bench_kd_step.legacy_dice_losses`); both
must give identical weights (checked). Calls alternate, 1 thread; writes JSON.

    python -m bench.bench_weighting --out bench/results/weighting.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

import common.kd.fusion as fusion
from bench.bench_kd_step import legacy_dice_losses
from common.io import atomic_write_json

SHAPES = ((16, 64), (2, 384), (8, 384))  # (batch, size)


def paired_ms(batch: int, size: int, rounds: int) -> dict[str, float]:
    """Median ms of the current and the former weighting, called in alternation."""
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(3, batch, 2, size, size), dim=2)
    mask = (torch.rand(batch, size, size) > 0.8).long()
    mask[: batch // 2] = 0
    weigh, current = fusion.build_weighting("inverse_dice_loss"), fusion.dice_losses

    def former() -> torch.Tensor:
        fusion.dice_losses = legacy_dice_losses  # type: ignore[assignment]
        try:
            return weigh(probs, mask)
        finally:
            fusion.dice_losses = current

    if not torch.equal(weigh(probs, mask), former()):
        raise AssertionError("current and former weightings differ")
    ms: dict[str, list[float]] = {"current": [], "former": []}
    for _ in range(rounds):
        for key, fn in (("current", lambda: weigh(probs, mask)), ("former", former)):
            t0 = time.perf_counter()
            fn()
            ms[key].append((time.perf_counter() - t0) * 1e3)
    return {k: sorted(v)[len(v) // 2] for k, v in ms.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", type=Path, default=Path("bench/results/weighting.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    res = {f"{b}x{s}": paired_ms(b, s, args.rounds) for b, s in SHAPES}
    for key, row in res.items():
        print(f"{key}: current {row['current']:.1f} ms, former {row['former']:.1f} ms")
    atomic_write_json(args.out, {"weighting_ms": res, "threads": 1, "rounds": args.rounds,
                                 "load_avg": list(os.getloadavg()),
                                 "date": time.strftime("%Y-%m-%d", time.gmtime())})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
