"""Memory guard: estimate a distillation run's coordinator memory before it starts and
refuse, with the knob to turn, when the estimate exceeds the available RAM or a configured cap,
instead of being killed by the OOM killer half way.

Estimate, in bytes, for ``J`` sites, ``N`` proxy slices of ``S x S`` px, ``K`` classes and
student batch size ``B`` (``P = S^2``)::

    base      = BASE_BYTES                          Python + torch + the student (measured)
    proxy     = M * P * (4 + 1) * PROXY_LOAD        fp32 slices + uint8 masks; M = N when the
                                                    proxy is kept in RAM, else
                                                    CASE_SLICES (spilled to .npy one case at a
                                                    time, read per item); x2: the load's copy
    teachers  = 0                                   on disk (fp16 memmap, read per item), or
              = J * N * P * (K + 1/4 + 1/64) * 4 * 2  when kept in memory (float32, stacked
                                                    copy + selected copy)
    build     = min(N, max(C, tb)) * P * (K + 1) * 12  one teacher chunk while the cache is built
                                                    (C = 2^21 / P slices, at least one teacher
                                                    batch tb = 16; outputs, concat, fp16 copy)
    weights   = 64 * J * P * (K + 1) * 4 * 3        one weighting chunk (64 slices x J teachers:
                                                    logits, softmax, Dice terms), once per run
    training  = B * P * (ACT_BYTES + J * (K + 1) * 4 * 4)   student activations (fwd + bwd) per
                                                    pixel and the batch's teacher maps (x4 copies:
                                                    read, augmented, collated, loss)
    query     = J * min(max(W, 1) * c, N) * P * (5 * 2 + (K + 1) * 2 * 3)   federated only: the
                                                    chunks in flight (W per site, c slices each,
                                                    at most the N proxy slices): the
                                                    request (fp32 slices + masks, array + wire)
                                                    and the fp16 reply (wire, decoded, memmap page)
    total     = base + proxy + teachers + max(build, weights, training, query)  (phases in turn)

``ACT_BYTES`` (measured 3.0-3.2 KB per pixel) and ``BASE_BYTES`` (768 MB after the imports,
~870 MB after a build) are the peak RSS of ``bench/bench_scale.py`` with the default enet student
on CPU (fp32), rounded up. The limit is ``memory_cap_gb`` when set, else the machine's available
memory (``psutil`` when installed, else ``MemAvailable`` of ``/proc/meminfo``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coordinator.distill.config import ExperimentConfig

GB = 1e9
BASE_BYTES = 900 * 2**20
PROXY_LOAD = 2
ACT_BYTES = 3584
BUILD_PIXELS = 512 * 64 * 64
CASE_SLICES = 256
KNOBS = ("lower student.batch_size or student.size (federated: or the run config's chunk-size "
         "or query-window), use fewer proxy slices or sites, or set memory_cap_gb")


class MemoryBudgetError(RuntimeError):
    """The estimated coordinator memory of a run exceeds the limit."""


@dataclass(frozen=True)
class MemoryPlan:
    """What the estimate needs from a run's plan."""

    sites: int
    slices: int
    size: int
    classes: int = 2
    batch_size: int = 16
    targets_in_memory: bool = False
    proxy_in_memory: bool = False
    query_chunk: int = 0  # federated: slices per query message (0: no federated query)
    query_window: int = 0  # federated: chunks in flight per site (0 = lockstep, one at a time)


def estimate(plan: MemoryPlan) -> dict[str, int]:
    """The module's formula, term by term (bytes); ``total`` = base + proxy + teachers + the
    largest phase (build, weights, training: they run one after the other)."""
    j, n, k, b = plan.sites, plan.slices, plan.classes, plan.batch_size
    p = plan.size * plan.size
    maps = k + 1 / 4 + 1 / 64
    terms = {
        "base": BASE_BYTES,
        "proxy": (n if plan.proxy_in_memory else min(n, CASE_SLICES)) * p * 5 * PROXY_LOAD,
        "teachers": int(j * n * p * maps * 4 * 2) if plan.targets_in_memory else 0,
        "build": min(n, max(BUILD_PIXELS // p, 16)) * p * (k + 1) * 4 * 3,
        "weights": 64 * j * p * (k + 1) * 4 * 3,
        "training": b * p * (ACT_BYTES + j * (k + 1) * 4 * 4),
        "query": j * min(max(plan.query_window, 1) * plan.query_chunk, n) * p * (10 + (k + 1) * 6),
    }
    phases = max(terms["build"], terms["weights"], terms["training"], terms["query"])
    fixed = terms["base"] + terms["proxy"] + terms["teachers"]
    return {**terms, "total": fixed + phases}


def available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Memory available to a new run: psutil's ``available`` or ``MemAvailable``."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{meminfo}: no MemAvailable line; set memory_cap_gb")


def check_memory(plan: MemoryPlan, cap_gb: float | None = None,
                 available: int | None = None) -> int:
    """The estimate (bytes); raises :class:`MemoryBudgetError` (one line naming the estimate,
    the limit and the knobs) when it exceeds ``cap_gb`` or else the available memory."""
    need = estimate(plan)["total"]
    if cap_gb is not None:
        limit, what = int(cap_gb * GB), "memory_cap_gb"
    else:
        limit, what = available if available is not None else available_bytes(), "available RAM"
    if need > limit:
        where = "in memory" if plan.targets_in_memory else "on disk"
        where += ", proxy in memory" if plan.proxy_in_memory else ", proxy on disk"
        raise MemoryBudgetError(
            f"memory guard: this run needs about {need / GB:.1f} GB ({plan.sites} sites x "
            f"{plan.slices} proxy slices x {plan.size} px, batch {plan.batch_size}, teacher "
            f"outputs {where}) but the limit is {limit / GB:.1f} GB ({what}); {KNOBS}")
    return need


def guard_experiment(cfg: ExperimentConfig, slices: int, targets_in_memory: bool = False,
                     proxy_in_memory: bool = False, sites: int | None = None,
                     query: tuple[int, int] = (0, 0)) -> int:
    """:func:`check_memory` for an experiment config with ``slices`` proxy slices and ``sites``
    sites (default: the config's). Both the local path and the federated ServerApp keep the
    teacher outputs and the proxy on disk (the flags are for callers that do not). ``query``:
    the federated round's ``(chunk-size, query-window)``."""
    plan = MemoryPlan(sites or len(cfg.sites), slices, cfg.student.size, 2,
                      cfg.student.batch_size, targets_in_memory, proxy_in_memory, *query)
    return check_memory(plan, cfg.memory_cap_gb)
