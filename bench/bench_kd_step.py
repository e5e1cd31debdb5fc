"""Benchmark: student training throughput, KD step vs plain step, student vs teacher inference.

All figures come from one process on one device so the ratios are comparable. Writes JSON.

    python -m bench.bench_kd_step --size 64 --batch 16 --device cpu --out bench/results/kd_cpu.json
    python -m bench.bench_kd_step --paper --device cuda --out bench/results/kd_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from common.io import strict_json_dumps
from common.kd.fusion import build_weighting
from common.kd.losses import KDLoss
from common.kd.targets import TeacherTargets
from common.models import build_model
from common.training import autocast


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], dev: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def fake_targets(j: int, b: int, s: int, dev: torch.device) -> TeacherTargets:
    """Random teacher outputs with the wire shapes: (J,B,2,S,S), (J,B,S/2,S/2), (J,B,S/8,S/8)."""
    return TeacherTargets(
        logits=torch.randn(j, b, 2, s, s, device=dev),
        at_early=torch.rand(j, b, s // 2, s // 2, device=dev),
        at_deep=torch.rand(j, b, s // 8, s // 8, device=dev),
        rc_early=torch.rand(j, b, device=dev), rc_deep=torch.rand(j, b, device=dev))


def make_step(args: argparse.Namespace, dev: torch.device, kd: bool) -> Callable[[], None]:
    """One optimiser step of the student, with (kd=True) or without teachers."""
    model = build_model(args.student).to(dev)
    if args.channels_last and dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn, weigh = KDLoss(), build_weighting("inverse_dice_loss")
    x = torch.randn(args.batch, 1, args.size, args.size, device=dev)
    y = (torch.rand(args.batch, args.size, args.size, device=dev) > 0.8).long()
    t = fake_targets(args.teachers, args.batch, args.size, dev)
    fwd = torch.compile(model.seg_forward) if args.compile else model.seg_forward

    def step() -> None:
        with autocast(dev, args.amp):
            out = fwd(x)
        out = type(out)(out.logits.float(), tuple(f.float() for f in out.features))
        if kd:
            w = weigh(torch.softmax(t.logits, 2), y)
            loss = loss_fn(out, y, t, w)["total"]
        else:
            loss = loss_fn(out, y)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def infer(name: str, args: argparse.Namespace, dev: torch.device) -> float:
    """Seconds per batch of inference of model ``name``."""
    model = build_model(name).to(dev).eval()
    x = torch.randn(args.batch, 1, args.size, args.size, device=dev)

    def run() -> None:
        with torch.no_grad(), autocast(dev, args.amp):
            model(x)

    return timeit(run, dev, args.warmup, args.iters)


def main() -> None:
    """Parse arguments, measure, print and write JSON."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--student", default="enet")
    p.add_argument("--teacher", default="deeplabv3plus_r50")
    p.add_argument("--teachers", type=int, default=3)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--paper", action="store_true", help="384px, batch 8, bf16, channels_last")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("bench/results/kd_step.json"))
    args = p.parse_args()
    if args.paper:
        args.size, args.batch, args.amp, args.channels_last = 384, 8, True, True
    dev = torch.device(args.device)
    plain = timeit(make_step(args, dev, kd=False), dev, args.warmup, args.iters)
    kd = timeit(make_step(args, dev, kd=True), dev, args.warmup, args.iters)
    s_inf, t_inf = infer(args.student, args, dev), infer(args.teacher, args, dev)
    res = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
        or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "plain_step_s": plain, "kd_step_s": kd, "kd_over_plain": kd / plain,
        "kd_slices_per_s": args.batch / kd, "plain_slices_per_s": args.batch / plain,
        "student_infer_s": s_inf, "teacher_infer_s": t_inf, "teacher_over_student": t_inf / s_inf,
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(strict_json_dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
