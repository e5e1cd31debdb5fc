"""CPU (and CUDA) inference speed of every student and teacher in every shipped runtime.

Latency (median, p95 over ``--reps`` runs after warm-up) and throughput (images/s) at each
``--batches`` x ``--sizes`` x ``--threads``, with the effective GFLOP/s (the fp32 model's FLOPs,
2 per MAC, :func:`common.models.complexity.count_flops`, divided by the median time) beside
each figure. Students run in ``eager`` (as trained), ``channels_last`` (Conv+BN folded,
NHWC), ``compile`` (folded, ``torch.compile`` inductor CPU; batch 1 at ``--compile-sizes`` only, the
first call's compilation in ``first_call_s``), ``pt2`` (the exported
:func:`torch.export` program), ``onnx`` (ONNX Runtime, ``ORT_ENABLE_ALL``, intra-op threads =
``threads``) and ``onnx-int8`` (ONNX Runtime static int8, QOperator, calibrated on proxy slices).
Teachers run eager fp32 (the reference rows; ``--teacher-runtimes`` adds others).

With ``--student-ckpt`` (a trained student) and ``--demo`` (the demo folder: ``data/proxy``,
``data/site_*``, ``teachers/site_*``) every student runtime is also scored: argmax agreement
with eager fp32 on the proxy slices, and the native-resolution Dice on the sites' test cases
(``teachers/<site>/split.json["test"]``); the teachers' own test Dice is read from their
``test_scores.json``.

The machine is shared (2 cores, other jobs running): figures are loaded and noisy; compare
rows measured in the same run only.

    python -m bench.bench_inference --quick                      # smoke: ENet + DeepLabV3+, 64 px
    python -m bench.bench_inference --demo demo_out \\
        --student-ckpt demo_out/distill_native/runs/multi_inverse_dice_loss/last.pt \\
        --out bench/results/inference.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.inference.runtimes import (
    argmax_agreement,
    ort_runner,
    ort_session,
    timings,
    torch_runner,
)
from common.io import atomic_write_json
from common.models import build_model
from common.models.complexity import count_flops
from common.models.roles import STUDENTS, TEACHERS
from coordinator.distill.proxy import ProxySet, load_proxy
from coordinator.export import export_onnx, exportable
from coordinator.quantize import quantize_student

STUDENT_RUNTIMES = ("eager", "channels_last", "compile", "pt2", "onnx", "onnx-int8")
Runner = Callable[[np.ndarray], np.ndarray]


def random_proxy(size: int, n: int = 16) -> ProxySet:
    """Stand-in calibration slices when no proxy folder is given (speed only)."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, 1, size, size)).astype(np.float32)
    ids = [f"random:{i}" for i in range(n)]
    return ProxySet(images, np.zeros((n, size, size), np.uint8), ids, ids)


class Builder:
    """Runners of one model in each runtime (ONNX files in a temporary folder)."""

    def __init__(self, model: Any, tmp: Path, proxy: Callable[[int], ProxySet]) -> None:
        self.model, self.tmp, self.proxy = model.eval(), tmp, proxy
        self._folded: Any = None
        self._files: dict[str, Path] = {}
        self._compiled: Any = None

    def folded(self) -> Any:
        if self._folded is None:
            self._folded = exportable(self.model)  # ENet unpool as scatter, Conv+BN folded
        return self._folded

    def onnx_file(self, int8: bool, size: int) -> Path:
        """The fp32 (or int8) ONNX file at ``size`` (the graph's H, W are static)."""
        fp32, key = self.tmp / f"m_fp32_{size}.onnx", f"int8_{size}" if int8 else f"fp32_{size}"
        if f"fp32_{size}" not in self._files:
            export_onnx(self.model, torch.zeros(1, 1, size, size), fp32)
            self._files[f"fp32_{size}"] = fp32
        if key not in self._files:
            self._files[key] = self.tmp / f"m_{key}.onnx"
            quantize_student(fp32, self._files[key], self.proxy(size))
        return self._files[key]

    def compiled(self) -> Any:
        """One ``torch.compile`` (inductor) wrapper, shared by every thread count."""
        if self._compiled is None:
            self._compiled = torch.compile(self.folded(), backend="inductor", dynamic=False)
        return self._compiled

    def runner(self, runtime: str, threads: int, size: int) -> tuple[Runner, float]:
        """``(runner, build seconds)``; the ``compile`` build time includes no compilation
        (inductor compiles on the first call, timed separately as the warm-up)."""
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        if runtime == "eager":
            run = torch_runner(self.model)
        elif runtime == "channels_last":
            run = torch_runner(self.folded().to(memory_format=torch.channels_last), True)
        elif runtime == "compile":
            run = torch_runner(self.compiled())
        elif runtime == "pt2":
            x = torch.zeros(2, 1, size, size)
            batch = torch.export.Dim("batch", min=1, max=1024)
            with torch.no_grad():
                ep = torch.export.export(self.folded(), (x,), dynamic_shapes=({0: batch},))
            run = torch_runner(ep.module())
        else:
            run = ort_runner(ort_session(self.onnx_file(runtime == "onnx-int8", size), threads))
        return run, time.perf_counter() - t0


def measure(run: Runner, x: np.ndarray, reps: int, flops: int) -> dict[str, Any]:
    """Warm-up time, median/p95 latency, throughput and effective GFLOP/s of ``run(x)``."""
    t0 = time.perf_counter()
    run(x)
    first = time.perf_counter() - t0
    t = timings(lambda: run(x), reps, warmup=1)
    sec = t["median_ms"] / 1e3
    return {**t, "first_call_s": first, "images_per_s": x.shape[0] / sec,
            "gflops": flops * x.shape[0] / 1e9, "eff_gflops_per_s": flops * x.shape[0] / 1e9 / sec}


def bench_model(name: str, model: Any, runtimes: list[str], args: argparse.Namespace,
                proxy: Callable[[int], ProxySet]) -> list[dict[str, Any]]:
    """Rows of one model over runtimes x threads x sizes x batches (teachers: batch 1)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        build = Builder(model, Path(tmp), proxy)
        for runtime in runtimes:
            for threads in args.threads:
                rows += _bench_runtime(name, build, runtime, threads, args)
    return rows


def _bench_runtime(name: str, build: Builder, runtime: str, threads: int,
                   args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    teacher = name in TEACHERS
    for size in args.sizes:
        if runtime == "compile" and size not in args.compile_sizes:
            continue
        flops = count_flops(build.model, (1, 1, size, size))
        try:
            run, build_s = build.runner(runtime, threads, size)
        except Exception as exc:  # noqa: BLE001 - record why a runtime is missing, go on
            rows.append({"model": name, "runtime": runtime, "threads": threads, "size": size,
                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
            continue
        for batch in ([1] if teacher or runtime == "compile" else args.batches):
            x = np.random.default_rng(0).normal(size=(batch, 1, size, size)).astype(np.float32)
            reps = args.teacher_reps if teacher else args.reps
            row = {"model": name, "role": "teacher" if teacher else "student",
                   "runtime": runtime, "precision": "int8" if runtime == "onnx-int8" else "fp32",
                   "threads": threads, "size": size, "batch": batch, "build_s": build_s,
                   **measure(run, x, reps, flops)}
            print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v)
                              for k, v in row.items()}), flush=True)
            rows.append(row)
    return rows


def _cuda_rows(names: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Eager fp32 on CUDA at batch 1 and 8, when a GPU is present."""
    if not torch.cuda.is_available():
        return []
    rows = []
    dev = torch.device("cuda")
    for name in names:
        model = build_model(name, in_channels=1, num_classes=2).eval().to(dev)
        for size in args.sizes:
            flops = count_flops(model, (1, 1, size, size))
            for batch in args.batches:
                x = torch.randn(batch, 1, size, size, device=dev)

                def run(x: torch.Tensor = x, model: Any = model) -> None:
                    with torch.no_grad():
                        model(x)
                    torch.cuda.synchronize()

                t = timings(run, args.reps, warmup=3)
                rows.append({"model": name, "runtime": "cuda-eager", "size": size,
                             "batch": batch, **t, "eff_gflops_per_s":
                             flops * batch / 1e9 / (t["median_ms"] / 1e3)})
    return rows


# ----------------------------------------------------------------------------- accuracy
def _per_slice(run: Runner, images: np.ndarray) -> np.ndarray:
    """``(N, 1, S, S)`` -> ``(N, K, S, S)`` logits, one slice at a time (no recompiles)."""
    return np.concatenate([run(images[i:i + 1]) for i in range(images.shape[0])])


def _test_volumes(demo: Path, size: int, plan: Any) -> list[Any]:
    from common.data.layout import discover_dataset
    from common.data.slices import load_volumes

    vols = []
    for split in sorted((demo / "teachers").glob("*/split.json")):
        site = split.parent.name
        ids = list(json.loads(split.read_text())["test"])
        vols += load_volumes(discover_dataset(demo / "data" / site), ids, size, plan=plan)
    return vols


def accuracy(ckpt: Path, demo: Path, size: int, runtimes: list[str]) -> dict[str, Any]:
    """Agreement with eager fp32 on the proxy slices and native-resolution test Dice of each
    runtime of the trained student ``ckpt``; the teachers' own test Dice as reference."""
    from common.inference.evaluate import score_native
    from common.inference.predict import softmax
    from common.models.checkpoint import load_model

    model, info = load_model(ckpt)
    proxy = load_proxy(demo / "data" / "proxy", size)
    vols = _test_volumes(demo, size, proxy.plan)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        build = Builder(model, Path(tmp), lambda s: proxy)
        ref: np.ndarray | None = None
        for runtime in runtimes:
            run, _ = build.runner(runtime, 1, size)
            logits = _per_slice(run, proxy.images)
            ref = logits if ref is None else ref
            dice = [score_native(softmax(_per_slice(run, v.image[:, None])), v).dice
                    for v in vols]
            rows[runtime] = {"agreement": argmax_agreement(logits, ref),
                             "native_dice": float(np.mean(dice)), "cases": len(vols)}
    base = rows[runtimes[0]]["native_dice"]
    for r in rows.values():
        r["dice_change"] = r["native_dice"] - base
    return {"student": info["model_name"], "checkpoint": str(ckpt), "size": size,
            "runtimes": rows, "teachers": _teacher_dice(demo)}


def _teacher_dice(demo: Path) -> dict[str, Any]:
    out = {}
    for scores in sorted((demo / "teachers").glob("*/test_scores.json")):
        card = json.loads((scores.parent / "teacher.json").read_text())
        dice = [c["dice"] for c in json.loads(scores.read_text()).values()]
        out[scores.parent.name] = {"architecture": card.get("architecture"),
                                   "size": card.get("input", {}).get("size"),
                                   "native_dice": float(np.mean(dice)), "cases": len(dice)}
    return out


# ----------------------------------------------------------------------------- summary
def headline(rows: list[dict[str, Any]], acc: dict[str, Any] | None, student: str,
             size: int = 384, threads: int = 2) -> dict[str, Any] | None:
    """The speed targets: the default student (fastest runtime costing <= 0.005 Dice and
    agreeing >= 99.5 %) vs DeepLabV3+ R50 eager fp32, ``size`` px, batch 1, ``threads``."""
    def pick(model: str, runtime: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["model"] == model and r["runtime"] == runtime
                     and r.get("size") == size and r.get("batch") == 1
                     and r.get("threads") == threads and "median_ms" in r), None)

    teacher = pick("deeplabv3plus_r50", "eager")
    ok = acc["runtimes"] if acc else {}
    cands = [r for rt in STUDENT_RUNTIMES if (r := pick(student, rt)) is not None
             and (not ok or (rt in ok and ok[rt]["dice_change"] >= -0.005
                             and ok[rt]["agreement"] >= 0.995))]
    if teacher is None or not cands:
        return None
    best = min(cands, key=lambda r: r["median_ms"])
    return {"size": size, "threads": threads, "student": student, "runtime": best["runtime"],
            "student_ms": best["median_ms"], "teacher_ms": teacher["median_ms"],
            "speedup": teacher["median_ms"] / best["median_ms"], "target_speedup": 20.0,
            "student_eff_gflops_per_s": best["eff_gflops_per_s"],
            "teacher_eff_gflops_per_s": teacher["eff_gflops_per_s"],
            "eff_ratio": best["eff_gflops_per_s"] / teacher["eff_gflops_per_s"],
            "target_eff_ratio": 0.5}


def paired(student: str, runtimes: list[str], size: int, threads: int, rounds: int,
           proxy: Callable[[int], ProxySet]) -> dict[str, Any]:
    """Student runtimes and DeepLabV3+ R50 eager fp32 timed in alternation (batch 1, ``size``
    px), so that both see the same machine load: median ms per runtime and speed-ups."""
    torch.manual_seed(0)
    teacher = build_model("deeplabv3plus_r50", in_channels=1, num_classes=2).eval()
    x = np.random.default_rng(0).normal(size=(1, 1, size, size)).astype(np.float32)
    flops = {"teacher": count_flops(teacher, x.shape)}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(student, in_channels=1, num_classes=2).eval()
        flops["student"] = count_flops(model, x.shape)
        build = Builder(model, Path(tmp), proxy)
        runs = {rt: build.runner(rt, threads, size)[0] for rt in runtimes}
        runs["teacher eager"] = torch_runner(teacher)
        ms: dict[str, list[float]] = {k: [] for k in runs}
        for run in runs.values():
            run(x)  # warm-up
        for _ in range(rounds):
            for k, run in runs.items():
                t0 = time.perf_counter()
                run(x)
                ms[k].append((time.perf_counter() - t0) * 1e3)
    med = {k: float(np.median(v)) for k, v in ms.items()}
    t = med.pop("teacher eager")
    return {"student": student, "size": size, "threads": threads, "rounds": rounds,
            "teacher_ms": t, "teacher_eff_gflops_per_s": flops["teacher"] / 1e9 / (t / 1e3),
            "student_ms": med, "speedup": {k: t / v for k, v in med.items()},
            "student_eff_gflops_per_s": {k: flops["student"] / 1e9 / (v / 1e3)
                                         for k, v in med.items()}}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke: enet + deeplabv3plus_r50, 64 px, batch 1, 1 thread, 3 reps, "
                        "no compile")
    p.add_argument("--models", nargs="+", default=[*STUDENTS, *TEACHERS])
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 384])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--runtimes", nargs="+", default=list(STUDENT_RUNTIMES),
                   choices=STUDENT_RUNTIMES)
    p.add_argument("--teacher-runtimes", nargs="+", default=["eager"], choices=STUDENT_RUNTIMES)
    p.add_argument("--compile-sizes", nargs="+", type=int, default=[384],
                   help="sizes torch.compile runs at (batch 1 only: each shape costs minutes "
                        "of inductor compilation on this machine)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--teacher-reps", type=int, default=3)
    p.add_argument("--demo", type=Path, help="demo folder (data/proxy, data/site_*, teachers)")
    p.add_argument("--student-ckpt", type=Path, help="trained student for the accuracy rows")
    p.add_argument("--out", type=Path, default=Path("bench/results/inference.json"))
    p.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                   help="only time the --models students' --runtimes against DeepLabV3+ R50 "
                        "eager in alternation (ROUNDS rounds, largest size, batch 1, each "
                        "--threads); written to --out")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.sizes, args.batches, args.threads = (
            ["enet", "deeplabv3plus_r50"], [64], [1], [1])
        args.reps, args.teacher_reps = 3, 2
        args.runtimes = [r for r in args.runtimes if r != "compile"]
    return args


def _result(args: argparse.Namespace, rows: list[dict[str, Any]], acc: dict[str, Any] | None,
            student: str, wall_s: float) -> dict[str, Any]:
    import os

    return {"machine": {"cpu": platform.processor() or platform.machine(),
                        "cores": os.cpu_count(), "torch": torch.__version__,
                        "note": "shared 2-core machine, other jobs running: loaded, noisy"},
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "calibration": "proxy slices" if args.demo else "random slices (speed only)",
            "rows": rows, "cuda_rows": [], "accuracy": acc,
            "headline": headline(rows, acc, student, max(args.sizes), max(args.threads)),
            "wall_s": wall_s}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    cache: dict[int, ProxySet] = {}

    def proxy(size: int) -> ProxySet:
        if size not in cache:
            cache[size] = (load_proxy(args.demo / "data" / "proxy", size) if args.demo
                           else random_proxy(size))
        return cache[size]

    if args.paired:
        res = [paired(m, args.runtimes, max(args.sizes), t,
                      args.paired, proxy) for m in args.models if m in STUDENTS
               for t in args.threads]
        atomic_write_json(args.out, {"paired": res, "note": "shared, loaded 2-core machine"})
        print(json.dumps(res, indent=1))
        return 0
    t0 = time.time()
    checked = [r for r in args.runtimes if r != "compile"]  # compile: minutes per shape here
    acc = (accuracy(args.student_ckpt, args.demo, args.sizes[0], checked)
           if args.student_ckpt and args.demo else None)
    rows: list[dict[str, Any]] = []
    student = acc["student"] if acc else next((m for m in args.models if m in STUDENTS), "enet")
    for name in args.models:  # the JSON is rewritten after each model (partial results kept)
        torch.manual_seed(0)
        model = build_model(name, in_channels=1, num_classes=2)
        runtimes = args.teacher_runtimes if name in TEACHERS else args.runtimes
        rows += bench_model(name, model, runtimes, args, proxy)
        out = _result(args, rows, acc, student, time.time() - t0)
        atomic_write_json(args.out, out)
    out["cuda_rows"] = _cuda_rows(args.models, args)
    atomic_write_json(args.out, out)
    print(json.dumps(out["headline"], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
