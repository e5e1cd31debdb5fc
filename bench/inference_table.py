"""Markdown speed/accuracy table from ``bench/bench_inference.py``'s JSON.

    python -m bench.inference_table bench/results/inference.json > table.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.bench_inference import headline

COLUMNS = [(64, 1, 1), (384, 1, 1), (384, 1, 2), (384, 8, 1)]  # (size, batch, threads)


def _cell(rows: list[dict[str, Any]], model: str, runtime: str, size: int, batch: int,
          threads: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["model"] == model and r["runtime"] == runtime
                 and r.get("size") == size and r.get("batch") == batch
                 and r.get("threads") == threads and "median_ms" in r), None)


def _fmt(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    return f"{row['median_ms']:.0f} ({row['eff_gflops_per_s']:.0f})"


def _dice(acc: dict[str, Any] | None, model: str, runtime: str) -> tuple[str, str, str]:
    """Native Dice, its change vs eager fp32, and argmax agreement (as table cells)."""
    if not acc or acc["student"] != model or runtime not in acc["runtimes"]:
        return "n/a", "", ""
    r = acc["runtimes"][runtime]
    return (f"{r['native_dice']:.4f}", f"{r['dice_change']:+.4f}",
            f"{100 * r['agreement']:.2f} %")


def _teacher_dice(acc: dict[str, Any] | None, model: str) -> str:
    got = [t["native_dice"] for t in (acc or {}).get("teachers", {}).values()
           if t["architecture"] == model]
    return f"{got[0]:.4f}" if got else "n/a"


def table(result: dict[str, Any]) -> str:
    """One row per (model, runtime): Dice, agreement and latency ms (effective GFLOP/s)."""
    rows, acc = result["rows"], result.get("accuracy")
    head = ["model", "runtime", "precision", "native Dice", "Δ Dice", "agreement"]
    head += [f"{s} px b{b} {t} thr: ms (GFLOP/s)" for s, b, t in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    seen: list[tuple[str, str]] = []
    for r in rows:
        if (r["model"], r["runtime"]) not in seen and "median_ms" in r:
            seen.append((r["model"], r["runtime"]))
    for model, runtime in seen:
        role = next(r.get("role") for r in rows if r["model"] == model and "role" in r)
        dice = (_teacher_dice(acc, model), "", "") if role == "teacher" else \
            _dice(acc, model, runtime)
        prec = "int8" if runtime == "onnx-int8" else "fp32"
        cells = [_fmt(_cell(rows, model, runtime, *c)) for c in COLUMNS]
        name = f"{model} (teacher)" if role == "teacher" else model
        lines.append("| " + " | ".join([name, runtime, prec, *dice, *cells]) + " |")
    return "\n".join(lines) + "\n"


def targets(result: dict[str, Any]) -> str:
    """The speed targets at 384 px, batch 1, for each thread count measured."""
    acc = result.get("accuracy")
    student = acc["student"] if acc else "enet"
    out = []
    for threads in sorted({r.get("threads") for r in result["rows"] if r.get("threads")}):
        h = headline(result["rows"], acc, student, 384, threads)
        if h is None:
            continue
        out.append(f"- {threads} thread(s): {student} `{h['runtime']}` {h['student_ms']:.0f} ms "
                   f"vs DeepLabV3+ R50 eager fp32 {h['teacher_ms']:.0f} ms = "
                   f"**{h['speedup']:.1f}x** (target 20x); effective "
                   f"{h['student_eff_gflops_per_s']:.1f} vs {h['teacher_eff_gflops_per_s']:.1f}"
                   f" GFLOP/s = **{100 * h['eff_ratio']:.0f} %** (target 50 %)")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path)
    result = json.loads(p.parse_args(argv).json.read_text())
    print(table(result))
    print(targets(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
