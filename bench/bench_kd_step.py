"""Benchmark: student training throughput, KD step vs plain step, student vs teacher inference.

All figures come from one process on one device so the ratios are comparable. The plain and
the KD step are timed in alternation (one of each per round), so both see the same machine load
(the machine is shared): ``kd_over_plain`` is the median of the per-round ratios. ``--empty``
sets the share of label-free slices (their teacher weights use the hard-Dice fallback);
``--legacy`` times the former weighting (``argmax`` over the class axis, the hard-Dice fallback
computed for every slice) for a before/after comparison. Writes JSON.

    python -m bench.bench_kd_step --size 64 --batch 16 --device cpu --out bench/results/kd_cpu.json
    python -m bench.bench_kd_step --paper --device cuda --out bench/results/kd_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

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


def timeit_paired(fns: Mapping[str, Callable[[], object]], dev: torch.device, warmup: int,
                  iters: int) -> dict[str, list[float]]:
    """Seconds per call of each of ``fns``, called in alternation for ``iters`` rounds after
    ``warmup`` rounds (each round calls every function once, in order)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + iters):
        for k, fn in fns.items():
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return times


def _median(v: list[float]) -> float:
    return sorted(v)[len(v) // 2]


def legacy_dice_losses(teacher_probs: torch.Tensor, mask: torch.Tensor | None,
                       classes: str = "all", empty: str = "soft") -> torch.Tensor:
    """The former :func:`common.kd.fusion.dice_losses`: ``argmax`` over the class axis and the
    hard-Dice fallback computed for every slice (``--legacy``; same values)."""
    from common.kd.functional import soft_dice_loss_per_sample as soft

    assert mask is not None

    def per(p: torch.Tensor, hard: bool) -> torch.Tensor:
        if hard:
            p = F.one_hot(p.argmax(dim=1), p.shape[1]).movedim(-1, 1).to(p.dtype)
        ks = [1] if classes == "foreground" else range(p.shape[1])
        return torch.stack([soft(p, mask, cls=k) for k in ks]).mean(dim=0)

    losses = torch.stack([per(p, False) for p in teacher_probs], dim=1)
    if empty == "soft":
        return losses
    is_empty = (mask == 1).flatten(1).sum(dim=1) == 0
    alt = torch.stack([per(p, True) for p in teacher_probs], dim=1)
    return torch.where(is_empty[:, None], alt, losses)


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
    y[: int(round(args.empty * args.batch))] = 0  # label-free slices: hard-Dice fallback
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


def _legacy(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` run with the former :func:`common.kd.fusion.dice_losses`."""
    import common.kd.fusion as fusion

    def run() -> None:
        current = fusion.dice_losses
        fusion.dice_losses = legacy_dice_losses  # type: ignore[assignment]
        try:
            step()
        finally:
            fusion.dice_losses = current

    return run


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
    p.add_argument("--empty", type=float, default=0.5,
                   help="share of the batch's slices without foreground (default 0.5)")
    p.add_argument("--legacy", action="store_true",
                   help="also time the former weighting (argmax, fallback on every slice)")
    p.add_argument("--no-infer", action="store_true", help="skip the inference timings")
    p.add_argument("--out", type=Path, default=Path("bench/results/kd_step.json"))
    args = p.parse_args()
    if args.paper:
        args.size, args.batch, args.amp, args.channels_last = 384, 8, True, True
    dev = torch.device(args.device)
    fns = {"plain": make_step(args, dev, kd=False), "kd": make_step(args, dev, kd=True)}
    if args.legacy:
        fns["kd_legacy"] = _legacy(make_step(args, dev, kd=True))
    times = timeit_paired(fns, dev, args.warmup, args.iters)
    plain, kd = _median(times["plain"]), _median(times["kd"])
    ratios = {k: _median([a / b for a, b in zip(v, times["plain"], strict=True)])
              for k, v in times.items() if k != "plain"}
    s_inf, t_inf = ((float("nan"), float("nan")) if args.no_infer else
                    (infer(args.student, args, dev), infer(args.teacher, args, dev)))
    res = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
        or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "plain_step_s": plain, "kd_step_s": kd, "kd_over_plain": ratios["kd"],
        "paired_ratios": ratios, "step_s": {k: _median(v) for k, v in times.items()},
        "load_avg": list(os.getloadavg()),
        "kd_slices_per_s": args.batch / kd, "plain_slices_per_s": args.batch / plain,
        "student_infer_s": s_inf, "teacher_infer_s": t_inf, "teacher_over_student": t_inf / s_inf,
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(strict_json_dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
