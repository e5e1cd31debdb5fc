"""Benchmark: detection and false-positive rates of the membership guard on phantoms.

A site's private slices (phantom prostate site A) are fingerprinted as the site does
(:func:`site_node.membership.build_fingerprints`). Then:

* **members** (should be refused): busy private slices after each edit a coordinator might
  make to pass them off as proxy slices: light noise (so the exact hash misses), gamma,
  horizontal / vertical flip, 90 / 180 / 270 degree rotation, 1 and 2 px shifts, crop 90 % and
  80 % then resize back, the same case prepared by another pipeline (other side);
* **non-members** (should be answered): slices of other patients (sites B and C: other styles)
  and of the proxy set (a coordinator's honest public data).

For each threshold it prints the share refused per edit (detection) and per non-member set
(false positives), and the time to screen one 256-slice query. Writes JSON.

    OMP_NUM_THREADS=1 python -m bench.bench_membership --out bench/results/membership.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from site_node.membership import build_fingerprints, lowres, scores

THRESHOLDS = (0.95, 0.96, 0.97, 0.98)
Edit = Callable[[np.ndarray], np.ndarray]


def _resize(x: np.ndarray, side: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))[:, None]
    return F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)[:, 0].numpy()


def _crop(frac: float) -> Edit:
    def edit(x: np.ndarray) -> np.ndarray:
        s = x.shape[-1]
        c = round(s * frac)
        o = (s - c) // 2
        return _resize(x[:, o:o + c, o:o + c], s)
    return edit


def _shift(px: int) -> Edit:
    return lambda x: np.roll(x, (px, px), axis=(1, 2))


def edits(rng: np.random.Generator) -> dict[str, Edit]:
    """name -> edit of ``(N, S, S)`` slices."""
    def gamma(x: np.ndarray) -> np.ndarray:
        lo, hi = x.min(), x.max()
        return ((x - lo) / (hi - lo + 1e-6)) ** 0.8 * (hi - lo) + lo

    return {
        "noise_5pct": lambda x: x + rng.normal(0, 0.05 * x.std(), x.shape).astype(np.float32),
        "gamma_0.8": gamma,
        "hflip": lambda x: x[:, :, ::-1],
        "vflip": lambda x: x[:, ::-1, :],
        "rot90": lambda x: np.rot90(x, 1, axes=(1, 2)),
        "rot180": lambda x: np.rot90(x, 2, axes=(1, 2)),
        "rot270": lambda x: np.rot90(x, 3, axes=(1, 2)),
        "shift_1px": _shift(1),
        "shift_2px": _shift(2),
        "crop_90_resize": _crop(0.9),
        "crop_80_resize": _crop(0.8),
        "hflip_shift_1px": lambda x: _shift(1)(x[:, :, ::-1]),
    }


def _slices(folder: Path, size: int) -> np.ndarray:
    from common.data.layout import discover_dataset
    from common.data.slices import load_volumes

    vols = load_volumes(discover_dataset(folder), None, size)
    x = np.concatenate([v.image for v in vols]).astype(np.float32)
    return x[np.abs(lowres(x, 16)).sum(axis=1) > 0]  # structured slices only


def _rate(x: np.ndarray, fp: object, thr: float) -> float:
    s = scores(x[:, None], fp)  # type: ignore[arg-type]
    return float((s >= thr).mean())


def run(size: int, cases: int, n: int, resolution: int) -> dict:
    from common.data.phantom import make_phantom, make_proxy

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root, shape = Path(tmp), (24, 96, 96)
        own = _slices(make_phantom(root / "a", "prostate", "A", cases, seed=10, shape=shape), size)
        others = {f"site_{s}": _slices(make_phantom(root / s, "prostate", s.upper(), cases,
                                                    seed=11 + i, shape=shape), size)
                  for i, s in enumerate("bc")}
        others["proxy"] = _slices(make_proxy(root / "p", n_cases=cases, seed=500, shape=shape),
                                  size)
        other_pipe = _slices(root / "a", size * 3 // 4)
    fp = build_fingerprints(own, "bench", resolution)
    pick = rng.choice(len(own), size=min(n, len(own)), replace=False)
    members = {k: np.ascontiguousarray(e(own[pick]), np.float32) for k, e in edits(rng).items()}
    members["other_pipeline_side"] = _resize(other_pipe[pick % len(other_pipe)], size)
    nonmem = {k: v[rng.choice(len(v), size=min(n, len(v)), replace=False)]
              for k, v in others.items()}
    out: dict = {"size": size, "private_slices": len(own), "per_set": n,
                 "resolution": resolution, "thresholds": {}}
    all_scores = {k: scores(v[:, None], fp) for k, v in {**members, **nonmem}.items()}
    for thr in THRESHOLDS:
        out["thresholds"][str(thr)] = {
            "detection": {k: float((all_scores[k] >= thr).mean()) for k in members},
            "false_positive": {k: float((all_scores[k] >= thr).mean()) for k in nonmem}}
    out["score_quantiles"] = {k: [round(float(q), 4) for q in np.quantile(s, [0, 0.05, 0.5, 1])]
                              for k, s in all_scores.items()}
    q = np.concatenate([nonmem["proxy"]] * 8)[:256, None]
    t0 = time.perf_counter()
    scores(q, fp)
    out["seconds_per_256_slice_query"] = round(time.perf_counter() - t0, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="slice side (the teacher's plan)")
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--n", type=int, default=200, help="slices per set")
    p.add_argument("--resolution", type=int, default=16, help="policy membership.resolution")
    p.add_argument("--out", type=Path, default=Path("bench/results/membership.json"))
    args = p.parse_args()
    res = run(args.size, args.cases, args.n, args.resolution)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    for thr, r in res["thresholds"].items():
        det = ", ".join(f"{k} {v:.2f}" for k, v in r["detection"].items())
        fpr = ", ".join(f"{k} {v:.3f}" for k, v in r["false_positive"].items())
        print(f"threshold {thr}: detection {det}\n  false positives: {fpr}")
    print(f"score quantiles (min, 5%, median, max): {res['score_quantiles']}")
    print(f"{res['seconds_per_256_slice_query']} s per 256-slice query "
          f"({res['private_slices']} private slices)")


if __name__ == "__main__":
    main()
