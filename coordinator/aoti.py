"""Ahead-of-time compiled student: an AOTInductor package built from the exported ``.pt2``.

:func:`compile_aoti` loads ``student.pt2`` (:func:`torch.export.export`, dynamic batch),
compiles it with :func:`torch._inductor.aoti_compile_and_package` into
``student.aoti.pt2`` (a shared library of generated C++ kernels and the weights, loaded by
:func:`common.inference.runtimes.load_aoti`; no Python model code at run time) and checks its output
against the eager fp32 model within :data:`TOLERANCE`.

Portability: inductor compiles for ``-march=native`` by default, i.e. for the exporting CPU;
a package built on an AVX-512 coordinator could then crash a hospital's older CPU with an
illegal instruction. The default :data:`TARGET` is ``x86-64-v3`` (AVX2 + FMA, x86 CPUs since
2013-2015) with 256-bit vectors; ``target=None`` compiles for the exporting CPU (fastest
there, not portable). The target is recorded in the model card and checked by the loader.

The compilation needs a C++ compiler (``g++``/``clang++``, or ``$CXX``) and takes minutes on
a small CPU; without a compiler it is skipped with one logged line and no file.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from common.inference.runtimes import load_aoti

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
#: Default ``-march`` of the compiled kernels on x86-64 (portable), and its vector width.
TARGET = "x86-64-v3"
SIMDLEN = 256


def cxx_compiler() -> str | None:
    """Path of the C++ compiler inductor would use (``$CXX``, else ``c++``/``g++``/``clang++``),
    None when there is none."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return next((p for n in names if (p := shutil.which(n))), None)


def inductor_configs(target: str | None) -> dict[str, Any]:
    """Inductor options for ``target`` (an ``-march`` value; None: the exporting CPU)."""
    if target is None or platform.machine() not in ("x86_64", "AMD64"):
        return {}
    return {"cpp.march": target, "cpp.simdlen": SIMDLEN}


def compile_aoti(pt2: Path, out: Path, model: Any, x: torch.Tensor,
                 target: str | None = TARGET) -> dict[str, Any] | None:
    """Compile the exported program ``pt2`` into the AOTInductor package ``out`` and verify it
    against ``model`` (eager fp32) on ``x (N, 1, S, S)`` and on one slice of it.

    Returns ``{"max_abs_diff", "compile_s", "target"}``, or None (one warning logged, no
    file) when no C++ compiler is found, the compilation fails, or the package's output
    differs from the model's by :data:`TOLERANCE` or more: the other runtimes do not depend
    on it.
    """
    if cxx_compiler() is None:
        log.warning("no C++ compiler (g++/clang++/$CXX) found: AOTInductor package %s skipped",
                    out)
        return None
    t0 = time.perf_counter()
    try:
        _compile(pt2, out, x, target)
    except Exception as exc:  # noqa: BLE001 - optional runtime: say why, export the rest
        log.warning("%s: AOTInductor compilation failed (%s: %s); package skipped", out,
                    type(exc).__name__, (str(exc).strip().splitlines() or [""])[0][:200])
        return None
    seconds = time.perf_counter() - t0
    runner = load_aoti(out)
    with torch.no_grad():
        diff = max(float((runner(v) - model(v)).abs().max()) for v in (x, x[:1].flip(-1) * 0.5))
    if not diff < TOLERANCE:
        out.unlink(missing_ok=True)
        log.warning("%s: AOTInductor output differs from the eager model by %.2e; package "
                    "removed", out, diff)
        return None
    log.info("[export] AOTInductor package %s compiled in %.0f s (target %s)", out, seconds,
             target or "native")
    return {"max_abs_diff": diff, "compile_s": seconds, "target": target or "native"}


def _compile(pt2: Path, out: Path, x: torch.Tensor, target: str | None) -> None:
    """Load the program ``pt2`` and compile it into ``out`` (written atomically)."""
    import torch._inductor

    program = torch.export.load(str(pt2))
    if program.example_inputs is None:
        program.example_inputs = ((x,), {})
    tmp = out.with_name(f".{out.name}.build.pt2")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(tmp), inductor_configs=inductor_configs(target))
        os.replace(tmp, out)  # same folder: atomic
    finally:
        tmp.unlink(missing_ok=True)
