"""CPU inference runtimes of an exported student, and the export-time optimisations they share.

A student export folder (:mod:`coordinator.export`) holds one file per runtime
(:data:`FILES`): ``eager`` (the state dict, rebuilt from the model registry, Conv+BN folded),
``pt2`` (a :func:`torch.export.export` program), ``onnx`` (fp32 ONNX run by ONNX Runtime with
every graph optimisation on), ``onnx-int8`` (ONNX Runtime static int8 quantisation,
calibrated on coordinator-side proxy slices) and ``aoti`` (an AOTInductor package compiled from
the ``.pt2``: generated C++ kernels in a shared library, :mod:`coordinator.aoti`).
:func:`load_runner` turns any of them into a function ``(N, 1, S, S) float32 -> (N, K, S, S)
float32 logits``.

Heavy imports (torch, onnxruntime) happen inside the functions.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

RUNTIMES: tuple[str, ...] = ("eager", "pt2", "aoti", "onnx", "onnx-int8")
FILES: dict[str, str] = {"eager": "student.pt", "pt2": "student.pt2", "aoti": "student.aoti.pt2",
                         "onnx": "student.onnx", "onnx-int8": "student.int8.onnx"}
PRECISION: dict[str, str] = {"eager": "fp32", "pt2": "fp32", "aoti": "fp32", "onnx": "fp32",
                             "onnx-int8": "int8"}
#: Runtime preference when no measured latency is known (first present one wins).
FALLBACK_ORDER: tuple[str, ...] = ("onnx", "pt2", "aoti", "eager", "onnx-int8")
#: CPU capabilities (``torch.backends.cpu.get_cpu_capability()``) that run an AOTInductor
#: package compiled for each ``-march`` target (:mod:`coordinator.aoti`).
AOTI_TARGET_NEEDS: dict[str, tuple[str, ...]] = {"x86-64-v3": ("AVX2", "AVX512")}
#: Minimum share of pixels whose argmax equals the fp32 model's for a runtime to be deployable.
MIN_AGREEMENT = 0.995

Runner = Callable[[np.ndarray], np.ndarray]  # (N, 1, S, S) float32 -> (N, K, S, S) logits


# ----------------------------------------------------------------------------- Conv+BN folding
def _conv_bn_pairs(model: Any, x: Any) -> list[tuple[Any, Any]]:
    """``(conv, bn)`` pairs where the BatchNorm2d's input *is* the Conv2d's output tensor in
    one forward of ``model`` on ``x`` (found with forward hooks; tensors are kept alive so
    ``id`` is unique)."""
    import torch
    from torch import nn

    outputs: dict[int, Any] = {}
    pairs: list[tuple[Any, Any]] = []
    keep: list[Any] = []

    def on_conv(mod: Any, _inp: Any, out: Any) -> None:
        keep.append(out)
        outputs[id(out)] = mod

    def on_bn(mod: Any, inp: Any, _out: Any) -> None:
        conv = outputs.get(id(inp[0]))
        if conv is not None:
            pairs.append((conv, mod))

    hooks = [m.register_forward_hook(on_conv) for m in model.modules()
             if type(m) is nn.Conv2d]
    hooks += [m.register_forward_hook(on_bn) for m in model.modules()
              if type(m) is nn.BatchNorm2d and m.track_running_stats]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return pairs


def _fold(conv: Any, bn: Any) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place (``bn`` becomes an identity)."""
    import torch

    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        conv.bias = torch.nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
        bn.reset_running_stats()  # mean 0, var 1
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.eps = 0.0


def fold_conv_bn(model: Any, x: Any, tol: float = 1e-4) -> int:
    """Fold every BatchNorm2d that directly consumes a Conv2d's output into that conv, in
    place (``model`` in eval mode). A pair whose folding changes the output of ``model`` on
    ``x`` by ``tol`` or more (the conv output is also used elsewhere) is rolled back.
    Returns the number of folded pairs."""
    import copy

    import torch

    model.eval()
    with torch.no_grad():
        ref = model(x)
    pairs = _conv_bn_pairs(model, x)
    saved = [(copy.deepcopy(c.state_dict()), copy.deepcopy(b.state_dict()), b.eps, c.bias)
             for c, b in pairs]
    for conv, bn in pairs:
        _fold(conv, bn)
    if _max_diff(model, x, ref) < tol:
        return _drop(model, [bn for _, bn in pairs])
    for (conv, bn), (cs, bs, eps, bias) in zip(pairs, saved, strict=True):  # one at a time
        conv.bias, bn.eps = bias, eps
        conv.load_state_dict(cs)
        bn.load_state_dict(bs)
    done = [bn for conv, bn in pairs if _fold_checked(model, x, ref, conv, bn, tol)]
    return _drop(model, done)


def _drop(model: Any, bns: list[Any]) -> int:
    """Replace each folded (now identity) BatchNorm of ``bns`` by ``nn.Identity``; count."""
    from torch import nn

    ids = {id(b) for b in bns}
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if id(child) in ids:
                setattr(mod, name, nn.Identity())
    return len(bns)


def _max_diff(model: Any, x: Any, ref: Any) -> float:
    import torch

    with torch.no_grad():
        return float((model(x) - ref).abs().max())


def _fold_checked(model: Any, x: Any, ref: Any, conv: Any, bn: Any, tol: float) -> int:
    import copy

    cs, bs, eps, bias = copy.deepcopy(conv.state_dict()), copy.deepcopy(bn.state_dict()), \
        bn.eps, conv.bias
    _fold(conv, bn)
    if _max_diff(model, x, ref) < tol:
        return 1
    conv.bias, bn.eps = bias, eps
    conv.load_state_dict(cs)
    bn.load_state_dict(bs)
    return 0


# ----------------------------------------------------------------------------- runners
def ort_session(path: Path | str | bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with every graph optimisation (``ORT_ENABLE_ALL``) and
    ``threads`` intra-op threads (None: ORT's default), inter-op 1, sequential execution."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = int(threads)
    src = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def ort_runner(sess: Any) -> Runner:
    """``(N, 1, S, S)`` float32 -> logits through an ONNX Runtime session."""
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {name: np.ascontiguousarray(x, np.float32)})[0])

    return run


def torch_runner(module: Any, channels_last: bool = False) -> Runner:
    """``(N, 1, S, S)`` float32 -> logits through a torch module (no grad, CPU)."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return np.asarray(module(t).float().contiguous().numpy())

    return run


def load_pt2(path: Path, extra_files: dict[str, str] | None = None) -> Any:
    """The module of a ``.pt2`` program (``extra_files`` filled in place, as torch does)."""
    import torch

    return torch.export.load(str(path), extra_files=extra_files).module()


def aoti_runs_here(target: str | None) -> bool:
    """Whether this CPU has the instructions an AOTInductor package compiled for ``target``
    needs (:data:`AOTI_TARGET_NEEDS`; unknown targets are assumed to run)."""
    import torch

    needs = AOTI_TARGET_NEEDS.get(target or "")
    return not needs or torch.backends.cpu.get_cpu_capability() in needs


def load_aoti(path: Path, target: str | None = None) -> Any:
    """An AOTInductor package (``student.aoti.pt2``) as a callable ``(N, 1, S, S) ->
    (N, K, S, S)``. ``target``: the ``-march`` it was compiled for (model card); a CPU without
    the instructions it needs raises ``RuntimeError`` (one line) instead of crashing later;
    ``"native"`` packages run only on a CPU like the exporting one (not checked)."""
    import torch

    if not aoti_runs_here(target):
        raise RuntimeError(f"{path}: compiled for {target}, which this CPU "
                           f"({torch.backends.cpu.get_cpu_capability()}) cannot run; use "
                           "--runtime onnx or pt2")
    # torch warns when the package's ISA (the portable target) differs from this CPU's, and
    # that a CPU-only install has no CUDA runtime: both expected here
    quiet = [logging.getLogger(n) for n in ("torch.export.pt2_archive._package",
                                            "torch.utils.cpp_extension")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        import torch._inductor

        return torch._inductor.aoti_load_package(str(path))
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)


def aoti_target(path: Path) -> str | None:
    """The ``-march`` target an AOTInductor package was compiled for, from the
    ``model_card.json`` beside it (None when unknown)."""
    import json

    card = path.parent / "model_card.json"
    try:
        row = json.loads(card.read_text()).get("runtimes", {}).get("aoti", {})
    except (OSError, ValueError):
        return None
    return row.get("target") if isinstance(row, dict) else None


def load_eager(path: Path) -> Any:
    """A registry model from a ``student.pt`` state file, eval mode, Conv+BN folded."""
    import torch

    from common.models.checkpoint import load_model

    model, _ = load_model(path)
    fold_conv_bn(model.eval(), torch.zeros(1, 1, 64, 64))
    return model


def load_runner(runtime: str, path: Path, threads: int | None = None) -> Runner:
    """A runner for one exported file; ``runtime`` one of :data:`RUNTIMES`."""
    if runtime in ("onnx", "onnx-int8"):
        return ort_runner(ort_session(path, threads))
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    if runtime == "pt2":
        return torch_runner(load_pt2(path))
    if runtime == "aoti":
        return torch_runner(load_aoti(path, aoti_target(path)))
    if runtime == "eager":
        return torch_runner(load_eager(path))
    raise ValueError(f"unknown runtime {runtime!r}; choose one of {RUNTIMES}")


# ----------------------------------------------------------------------------- checks, timing
def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels where the argmax over axis 1 of two ``(N, K, H, W)`` logits agree."""
    return float((a.argmax(1) == b.argmax(1)).mean())


def timings(fn: Callable[[], object], reps: int, warmup: int = 1) -> dict[str, float]:
    """Median and p95 wall time (ms) of ``reps`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    ms.sort()
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return {"median_ms": statistics.median(ms), "p95_ms": p95, "reps": float(len(ms))}


def fastest(latency: dict[str, float], present: Iterable[str],
            agreement: dict[str, float] | None = None) -> str | None:
    """The present runtime with the lowest measured latency whose agreement with fp32 is at
    least :data:`MIN_AGREEMENT` (unmeasured ones: :data:`FALLBACK_ORDER`); None if none."""
    ok = [r for r in present if (agreement or {}).get(r, 1.0) >= MIN_AGREEMENT]
    timed = [r for r in ok if r in latency]
    if timed:
        return min(timed, key=lambda r: latency[r])
    return next((r for r in FALLBACK_ORDER if r in ok), None)


def _bound(run: Runner, x: np.ndarray) -> Callable[[], object]:
    return lambda: run(x)


def pooled_dice(logits: np.ndarray, masks: np.ndarray) -> float:
    """Pooled foreground Dice of ``argmax(logits (N, K, S, S))`` vs ``masks (N, S, S)``
    (1.0 when both are empty)."""
    pred, gt = logits.argmax(1) > 0, masks > 0
    denom = int(pred.sum()) + int(gt.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & gt).sum()) / denom


def runtime_report(files: dict[str, Path], ref: np.ndarray, x: np.ndarray,
                   masks: np.ndarray | None = None, reps: int = 10,
                   threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Per runtime of ``files``: precision, max |logits - ref|, argmax agreement with ``ref``
    (the eager fp32 logits of ``x (N, 1, S, S)``), pooled Dice vs ``masks (N, S, S)`` when
    given, and the median / p95 latency (ms) at batch 1 over ``reps`` runs."""
    out: dict[str, dict[str, Any]] = {}
    for runtime, path in files.items():
        run = load_runner(runtime, path, threads)
        logits = run(x)
        row: dict[str, Any] = {"file": path.name, "precision": PRECISION[runtime],
                               "max_abs_diff": float(np.abs(logits - ref).max()),
                               "agreement": argmax_agreement(logits, ref)}
        if masks is not None:
            row["proxy_dice"] = pooled_dice(logits, masks)
        row["latency"] = {**timings(_bound(run, x[:1]), reps, warmup=2),
                          "batch": 1, "size": int(x.shape[-1]), "threads": threads or 0}
        out[runtime] = row
    return out
