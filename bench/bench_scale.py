"""Scale benchmark, in-process part: the coordinator's memory and time as the
number of sites, of proxy slices and the image size grow, before (in-RAM targets) and after
(fp16 memmap cache, proxy spilled to ``.npy``, streamed weights).

One variable grows at a time from the reference row (3 sites, 1,024 slices, 64 px):
sites 3/6/12, slices 1k/4k/16k, size 64/128/256. Each row runs in its own subprocess, which:

1. writes a phantom proxy set (disk + noise slices, seeded) - "after": spilled to ``.npy`` with
   :func:`coordinator.distill.dataset.spill_slices`; "before": arrays in RAM;
2. builds every site's teacher outputs: one tiny, untrained ``tiny_unet`` runs once per proxy
   slice (site ``j`` sends its logits + ``0.01 j``: this measures the coordinator, not teacher
   compute; the query round over Flower is ``bench``'s QUERY+RAY part) - "after": streamed into
   :class:`~coordinator.distill.cache.TeacherCache`; "before": the old path (full fp32 outputs
   per site, the legacy ``.pt`` written and read back, stacked, then selected);
3. computes the per-slice weights (``inverse_dice_loss``; "after": stored beside the cache);
4. trains the student (enet, batch 16, AMP off on CPU) for ``--steps`` batches drawn at random
   from the whole proxy set (a subset of the epoch to stay affordable on 2 shared cores); the
   epoch time is extrapolated as ``step time x N / 16``.

It reports the peak RSS (``ru_maxrss``) after each phase, the cache bytes on disk per site and
slice against the fp32 payload, and the times; then fits ``y ~ sites^a x slices^b x size^c``
per metric (log-linear least squares over each group) and projects 10 sites x 5,000 slices x
384 px. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_scale.py --paths after before --steps 10
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

REF = (3, 1024, 64)
GROUPS: dict[str, list[tuple[int, int, int]]] = {
    "sites": [(3, 1024, 64), (6, 1024, 64), (12, 1024, 64)],
    "slices": [(3, 1024, 64), (3, 4096, 64), (3, 16384, 64)],
    "size": [(3, 1024, 64), (3, 1024, 128), (3, 1024, 256)],
}
TARGET = (10, 5000, 384)
CHUNK = 512
BATCH = 16


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phantom_chunks(n: int, size: int, seed: int = 0) -> Any:
    """Consecutive ``(images (b,1,S,S) float32, masks (b,S,S) uint8, ids)`` parts, seeded."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size] / size
    for a in range(0, n, CHUNK):
        b = min(a + CHUNK, n)
        rng = np.random.default_rng([seed, a])
        c = rng.uniform(0.3, 0.7, (b - a, 2, 1, 1))
        r = rng.uniform(0.05, 0.25, (b - a, 1, 1))
        masks = ((yy - c[:, 0]) ** 2 + (xx - c[:, 1]) ** 2 < r ** 2).astype(np.uint8)
        imgs = masks + 0.3 * rng.standard_normal((b - a, size, size))
        yield imgs[:, None].astype(np.float32), masks, [f"p{i}" for i in range(a, b)]


def _teacher() -> Any:
    import torch

    from common.models import build_model

    torch.manual_seed(0)
    return build_model("tiny_unet", in_channels=1, num_classes=2)


def _shifted(t: Any, j: int) -> Any:
    """Site ``j``'s answer: the shared tiny teacher's logits + 0.01 j (a distinct teacher)."""
    import dataclasses

    return dataclasses.replace(t, logits=t.logits + 0.01 * j)


def _cfg(size: int, out: Path) -> Any:
    from coordinator.distill.config import ExperimentConfig, SiteSpec, StudentTrainConfig

    s = StudentTrainConfig(model="enet", size=size, epochs=1, batch_size=BATCH, device="cpu",
                           amp=False, channels_last=False)
    site = SiteSpec(name="bench", data=out, teacher_dir=out)
    return ExperimentConfig(name="scale", out=out, proxy=out, sites=[site], student=s)


def _site_rows(first: Any, j: int, a: int, b: int) -> Any:
    return _shifted(first.index(slice(a, b)), j)


def build_after(sites: int, n: int, size: int, work: Path) -> tuple[Any, Any]:
    """The new path: proxy spilled to ``.npy``, each site's outputs streamed to the cache."""
    import torch

    from common.kd.teacher_outputs import teacher_outputs
    from coordinator.distill.cache import CachedTargets, TeacherCache
    from coordinator.distill.dataset import spill_slices

    proxy = spill_slices(work / "proxy", phantom_chunks(n, size))
    cache, key, model = TeacherCache(work / "cache"), proxy.digest, _teacher()
    cache.build_answers("s0", key, proxy.images, proxy.masks, lambda i, m: teacher_outputs(
        model, i, m, torch.device("cpu"), 16), chunk=CHUNK)
    first = cache.open("s0", key)
    assert first is not None
    for j in range(1, sites):
        cache.build(f"s{j}", key, n, partial(_site_rows, first, j), chunk=CHUNK)
    opened = [cache.open(f"s{j}", key) for j in range(sites)]
    return proxy, CachedTargets.stack([t for t in opened if t is not None])


def build_before(sites: int, n: int, size: int, work: Path) -> tuple[Any, Any]:
    """The old path: proxy in RAM; per site full fp32 outputs, the legacy ``.pt`` cache written
    and read back as float32 (the old ``TeacherCache``), all sites stacked in RAM."""
    import numpy as np
    import torch

    from common.io import atomic_torch_save
    from common.kd.targets import TeacherTargets
    from common.kd.teacher_outputs import teacher_outputs
    from common.protocol import slice_hash
    from coordinator.distill.proxy import ProxySet

    parts = list(phantom_chunks(n, size))
    images = np.concatenate([p[0] for p in parts])
    masks = np.concatenate([p[1] for p in parts])
    proxy = ProxySet(images, masks, [i for p in parts for i in p[2]],
                     [slice_hash(i) for i in images])
    del parts
    loaded: list[TeacherTargets] = []
    for j in range(sites):
        t = teacher_outputs(_teacher(), images, masks, torch.device("cpu"), 16) if j == 0 \
            else _shifted(loaded[0], j)
        path = work / f"s{j}.pt"
        atomic_torch_save(path, t.map(lambda v: v.half() if v.dim() > 2 else v.float())
                          .as_dict())
        del t
        data = torch.load(path, map_location="cpu", weights_only=True)
        loaded.append(TeacherTargets(**data).map(lambda v: v.float()))
        del data
    return proxy, TeacherTargets.stack(loaded)


def student_steps(proxy: Any, targets: Any, sites: int, steps: int, work: Path
                  ) -> tuple[float, float]:
    """Weights (seconds) and ``steps`` student batches (seconds per step), as ``_fit`` does."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from common.data.augment import build_augment
    from coordinator.distill.config import WeightingSpec
    from coordinator.distill.dataset import DistillDataset
    from coordinator.distill.student import (
        DistillData,
        StudentRun,
        _epoch,
        _model,
        _Step,
        _trainer,
        run_targets,
        run_weights,
    )

    cfg, dev = _cfg(proxy.images.shape[-1], work), torch.device("cpu")
    run = StudentRun("multi", list(range(sites)), WeightingSpec(name="inverse_dice_loss"))
    t = run_targets(run, DistillData(proxy, targets, [f"s{j}" for j in range(sites)], {}))
    assert t is not None and run.weighting is not None
    t0 = time.perf_counter()
    w = run_weights(run.weighting, t, proxy.masks)
    t_w = time.perf_counter() - t0
    ds = DistillDataset(proxy, t, build_augment(cfg.student.augment, seed=0))
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:steps * BATCH]
    loader = DataLoader(Subset(ds, pick.tolist()), batch_size=BATCH)
    tr = _trainer(_model(cfg, dev), loader, cfg, dev, work / "run")
    t0 = time.perf_counter()
    _epoch(tr, loader, _Step(run, cfg, dev, w), cfg, "bench")
    return t_w, (time.perf_counter() - t0) / steps


def one_row(sites: int, n: int, size: int, path: str, steps: int) -> dict[str, Any]:
    """Measure one row in this process (call it in a fresh subprocess)."""
    import torch

    import common.kd.teacher_outputs  # noqa: F401
    import coordinator.distill.dataset  # noqa: F401
    import coordinator.distill.student  # noqa: F401  (imports before the first RSS reading)

    torch.set_num_threads(1)
    row: dict[str, Any] = {"sites": sites, "slices": n, "size": size, "path": path,
                           "steps": steps, "rss_start_mb": _peak_mb()}
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent / "results") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        build = build_after if path == "after" else build_before
        proxy, targets = build(sites, n, size, work)
        row["build_s"], row["rss_after_build_mb"] = time.perf_counter() - t0, _peak_mb()
        disk = sum(f.stat().st_size for f in (work / "cache").rglob("s*/*.npy")) \
            if path == "after" else sum(f.stat().st_size for f in work.glob("s*.pt"))
        row["cache_bytes_per_site_slice"] = disk / (sites * n)
        row["fp32_payload_bytes_per_slice"] = (2 * size * size + (size // 2) ** 2
                                               + (size // 8) ** 2) * 4 + 2 * 4
        row["weights_s"], step_s = student_steps(proxy, targets, sites, steps, work)
        row["step_s"], row["epoch_s_extrapolated"] = step_s, step_s * math.ceil(n / BATCH)
        row["peak_rss_mb"] = _peak_mb()
    return row


def run_row(sites: int, n: int, size: int, path: str, steps: int) -> dict[str, Any]:
    """:func:`one_row` in a fresh subprocess (its own peak RSS), one thread."""
    import os

    cmd = [sys.executable, __file__, "--row", str(sites), str(n), str(size), path, str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"row {sites}x{n}x{size} {path} failed:\n{res.stderr[-3000:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``log y`` on ``log x``."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / \
        sum((a - mx) ** 2 for a in lx)


METRICS = ("peak_rss_mb", "build_s", "weights_s", "epoch_s_extrapolated")


def fit(rows: list[dict[str, Any]], path: str) -> dict[str, Any]:
    """Exponents ``(a, b, c)`` of sites, slices, size per metric and the TARGET projection."""
    by = {(r["sites"], r["slices"], r["size"]): r for r in rows if r["path"] == path}
    out: dict[str, Any] = {}
    for m in METRICS:
        exps = []
        for axis, (g, pts) in enumerate(GROUPS.items()):
            have = [p for p in pts if p in by]
            exps.append(slope([p[axis] for p in have], [by[p][m] for p in have])
                        if len(have) > 1 else 0.0)
            del g
        ref = by[REF][m]
        proj = ref * math.prod((t / r) ** e for t, r, e in zip(TARGET, REF, exps, strict=True))
        out[m] = {"exponents": dict(zip(("sites", "slices", "size"), exps, strict=True)),
                  "projection_10x5000x384": proj}
    return out


def growth(rows: list[dict[str, Any]], path: str) -> dict[str, float]:
    """Peak-RSS growth (%) from 1k to 16k slices and from 3 to 12 sites (the issue's target)."""
    by = {(r["sites"], r["slices"], r["size"]): r["peak_rss_mb"] for r in rows
          if r["path"] == path}
    out = {}
    for name, hi in (("slices_1k_to_16k", (3, 16384, 64)), ("sites_3_to_12", (12, 1024, 64))):
        if REF in by and hi in by:
            out[name] = 100.0 * (by[hi] / by[REF] - 1.0)
    return out


def markdown(res: dict[str, Any]) -> str:
    """The table for docs/BENCHMARKS.md."""
    head = ("| path | sites | slices | px | peak RSS MB | build s | weights s | step s | "
            "epoch s (extrap.) | cache B/site/slice | fp32 B/slice |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = [f"| {r['path']} | {r['sites']} | {r['slices']} | {r['size']} | "
             f"{r['peak_rss_mb']:.0f} | {r['build_s']:.1f} | {r['weights_s']:.2f} | "
             f"{r['step_s']:.3f} | {r['epoch_s_extrapolated']:.0f} | "
             f"{r['cache_bytes_per_site_slice']:.0f} | {r['fp32_payload_bytes_per_slice']} |"
             for r in res["rows"]]
    fits = []
    for path, f in res["fits"].items():
        for m, v in f.items():
            e = v["exponents"]
            fits.append(f"- {path}, {m}: ~ sites^{e['sites']:.2f} x slices^{e['slices']:.2f} "
                        f"x size^{e['size']:.2f}; 10 x 5000 x 384 px: "
                        f"{v['projection_10x5000x384']:.4g}")
    grow = [f"- {p}: peak RSS growth {g}" for p, g in res["growth"].items()]
    return head + "\n".join(lines) + "\n\n" + "\n".join(fits) + "\n" + "\n".join(grow) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--paths", nargs="+", default=["after", "before"])
    ap.add_argument("--groups", nargs="+", default=list(GROUPS))
    ap.add_argument("--steps", type=int, default=10, help="student batches per row")
    ap.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    ap.add_argument("--row", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row:
        s, n, px, path, steps = args.row
        print(json.dumps(one_row(int(s), int(n), int(px), path, int(steps))))
        return
    t0 = time.perf_counter()
    todo = list(dict.fromkeys(p for g in args.groups for p in GROUPS[g]))
    rows = []
    for path in args.paths:
        for sites, n, px in todo:
            rows.append(run_row(sites, n, px, path, args.steps))
            print(json.dumps(rows[-1]), flush=True)
    res = {"rows": rows, "fits": {p: fit(rows, p) for p in args.paths},
           "growth": {p: growth(rows, p) for p in args.paths}, "steps": args.steps,
           "batch": BATCH, "threads": 1, "wall_s": time.perf_counter() - t0,
           "command": " ".join(sys.argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res) + f"wrote {args.out}")


if __name__ == "__main__":
    main()
