"""Paired speed table: every student in every shipped runtime against DeepLabV3+ R50 eager fp32.

At ``--size`` px (default 384), batch 1, ``--threads`` intra-op threads (default 1). Runtimes:
``eager`` (as trained), ``pt2`` (:func:`torch.export` program, Conv+BN folded), ``aoti`` (the
AOTInductor package compiled from the ``.pt2``, :mod:`coordinator.aoti`, portable target),
``onnx`` (ONNX Runtime fp32) and ``onnx-int8`` (ONNX Runtime static int8), plus the int8
argmax agreement with eager fp32 on the calibration slices, parameters and FLOPs (2 per MAC).

The machine is shared: every round calls each (model, runtime) once and the teacher once, in
alternation, so that all see the same load; the table gives the median ms over rounds and the
speed-up ``teacher median / student median`` (plus the median of per-round ratios). The load
average before and after is recorded. Random weights (speed only) unless ``--proxy`` gives
calibration/agreement slices (e.g. the demo's ``data/proxy``).

    python -m bench.bench_speed_table --rounds 9 --out bench/results/speed_table.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.bench_inference import Builder, Runner, random_proxy
from common.inference.runtimes import argmax_agreement, torch_runner
from common.io import atomic_write_json
from common.models import build_model, count_params
from common.models.complexity import count_flops
from coordinator.aoti import compile_aoti
from coordinator.distill.proxy import ProxySet, load_proxy
from coordinator.export import export_pt2

STUDENTS = ("enet", "espnet", "mobilenetv2", "lraspp_mobilenet_v3_large")
RUNTIMES = ("eager", "pt2", "aoti", "onnx", "onnx-int8")
TEACHER = "deeplabv3plus_r50"


class TableBuilder(Builder):
    """:class:`bench.bench_inference.Builder` with the ``aoti`` runtime (packages cached in
    ``cache`` by model name and size: the compilation takes minutes here)."""

    def __init__(self, name: str, model: Any, tmp: Path, proxy: Any, cache: Path) -> None:
        super().__init__(model, tmp, proxy)
        self.name, self.cache = name, cache
        self.compile_s: float | None = None

    def runner(self, runtime: str, threads: int, size: int) -> tuple[Runner, float]:
        if runtime != "aoti":
            return super().runner(runtime, threads, size)
        from common.inference.runtimes import load_aoti

        torch.set_num_threads(threads)
        pkg = self.cache / f"{self.name}_{size}.aoti.pt2"
        if not pkg.is_file():
            pkg.parent.mkdir(parents=True, exist_ok=True)
            x = torch.randn(2, 1, size, size)
            export_pt2(self.model, x, self.tmp / "m.pt2")
            info = compile_aoti(self.tmp / "m.pt2", pkg, self.model, x)
            if info is None:
                raise RuntimeError("AOTInductor package not built (see the log)")
            self.compile_s = info["compile_s"]
        return torch_runner(load_aoti(pkg)), 0.0


def _proxy(args: argparse.Namespace) -> ProxySet:
    if args.proxy:
        return load_proxy(args.proxy, args.size)
    return random_proxy(args.size, 16)


def build_runs(args: argparse.Namespace, tmp: Path, proxy: ProxySet
               ) -> tuple[dict[tuple[str, str], Runner], dict[str, dict[str, Any]]]:
    """Runners keyed by (model, runtime) and per model its params, GFLOPs, int8 agreement."""
    runs: dict[tuple[str, str], Runner] = {}
    info: dict[str, dict[str, Any]] = {}
    shape = (1, 1, args.size, args.size)
    calib = proxy.images[:8].astype(np.float32)
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, in_channels=1, num_classes=2).eval()
        build = TableBuilder(name, model, tmp / name, lambda s: proxy, args.aoti_cache)
        (tmp / name).mkdir()
        info[name] = {"params": count_params(model), "gflops": count_flops(model, shape) / 1e9,
                      "errors": {}}
        for rt in args.runtimes:
            try:
                runs[(name, rt)] = build.runner(rt, args.threads, args.size)[0]
            except Exception as exc:  # noqa: BLE001 - record a missing runtime, go on
                info[name]["errors"][rt] = f"{type(exc).__name__}: {str(exc)[:200]}"
        if build.compile_s is not None:
            info[name]["aoti_compile_s"] = build.compile_s
        ref = np.concatenate([runs[(name, "eager")](calib[i:i + 1]) for i in range(len(calib))])
        for rt in ("onnx-int8", "aoti", "onnx", "pt2"):
            if (name, rt) in runs:
                got = np.concatenate([runs[(name, rt)](calib[i:i + 1])
                                      for i in range(len(calib))])
                info[name].setdefault("agreement", {})[rt] = argmax_agreement(got, ref)
    torch.manual_seed(0)
    runs[("teacher", "eager")] = torch_runner(
        build_model(TEACHER, in_channels=1, num_classes=2).eval())
    info["teacher"] = {"model": TEACHER, "gflops": count_flops(
        build_model(TEACHER, in_channels=1, num_classes=2), shape) / 1e9}
    return runs, info


def time_rounds(runs: dict[tuple[str, str], Runner], size: int, rounds: int
                ) -> dict[tuple[str, str], list[float]]:
    """ms per call of every runner over ``rounds`` interleaved rounds (after one warm-up)."""
    x = np.random.default_rng(0).normal(size=(1, 1, size, size)).astype(np.float32)
    for run in runs.values():
        run(x)
    ms: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            t0 = time.perf_counter()
            run(x)
            ms[key].append((time.perf_counter() - t0) * 1e3)
    return ms


def summarise(ms: dict[tuple[str, str], list[float]], info: dict[str, dict[str, Any]]
              ) -> dict[str, Any]:
    """Per model and runtime: median ms, speed-up over the teacher (of medians, and the median
    of per-round ratios)."""
    teacher = ms[("teacher", "eager")]
    t_med = float(np.median(teacher))
    rows: dict[str, Any] = {}
    for (name, rt), v in ms.items():
        if name == "teacher":
            continue
        ratio = [t / s for t, s in zip(teacher, v, strict=True)]
        rows.setdefault(name, {**info[name], "runtimes": {}})["runtimes"][rt] = {
            "median_ms": float(np.median(v)), "speedup": t_med / float(np.median(v)),
            "paired_speedup": float(np.median(ratio))}
    return {"teacher_ms": t_med, "teacher": info["teacher"], "students": rows}


def markdown(res: dict[str, Any], runtimes: list[str]) -> str:
    """The table: per student, params, GFLOPs, speed-up per runtime (ms), int8 agreement."""
    head = ["student", "params (M)", "GFLOPs", *runtimes, "int8 agreement"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in res["students"].items():
        cells = [name, f"{row['params'] / 1e6:.2f}", f"{row['gflops']:.2f}"]
        for rt in runtimes:
            r = row["runtimes"].get(rt)
            cells.append("–" if r is None else f"{r['speedup']:.1f}x ({r['median_ms']:.0f} ms)")
        agree = row.get("agreement", {}).get("onnx-int8")
        cells.append("–" if agree is None else f"{100 * agree:.2f} %")
        lines.append("| " + " | ".join(cells) + " |")
    t = res["teacher"]
    lines.append(f"\nDeepLabV3+ R50 eager fp32: {res['teacher_ms']:.0f} ms, "
                 f"{t['gflops']:.2f} GFLOPs.")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(STUDENTS))
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--proxy", type=Path, help="proxy folder for calibration and agreement")
    p.add_argument("--aoti-cache", type=Path,
                   default=Path(tempfile.gettempdir()) / "fedmtkd_aoti_cache",
                   help="compiled packages, reused across runs (random weights, seed 0)")
    p.add_argument("--out", type=Path, default=Path("bench/results/speed_table.json"))
    args = p.parse_args(argv)
    if "eager" not in args.runtimes:
        args.runtimes = ["eager", *args.runtimes]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    t0, load0 = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        runs, info = build_runs(args, Path(tmp), _proxy(args))
        build_s = time.time() - t0
        ms = time_rounds(runs, args.size, args.rounds)
    res = summarise(ms, info)
    res.update({"size": args.size, "batch": 1, "threads": args.threads, "rounds": args.rounds,
                "date": time.strftime("%Y-%m-%d", time.gmtime()), "build_s": build_s,
                "wall_s": time.time() - t0, "load_avg_before": list(load0),
                "load_avg_after": list(os.getloadavg()),
                "machine": {"cpu": platform.processor() or platform.machine(),
                            "cores": os.cpu_count(), "torch": torch.__version__,
                            "isa": torch.backends.cpu.get_cpu_capability()},
                "calibration": str(args.proxy) if args.proxy else "random slices (speed only)",
                "raw_ms": {f"{m}/{r}": v for (m, r), v in ms.items()}})
    atomic_write_json(args.out, res)
    print(markdown(res, args.runtimes))
    print(json.dumps({k: res[k] for k in ("teacher_ms", "wall_s", "load_avg_after")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
