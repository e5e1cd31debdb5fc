"""Benchmark: wire bytes per proxy slice and fused-target quality for each logits compression.

On tiny phantom proxy data (``make_proxy``), three synthetic teachers (noisy logits of the
masks, different seeds) answer through :func:`common.compress.compress_logits` and are decoded
by :func:`common.compress.decompress_logits`, exactly as the query reply does. For each mode it
reports the array bytes per slice (logits only and the whole reply including attention maps and
scalars) and the Dice of the fused target (default weighting) versus the fp32 reference, soft
(probabilities) and hard (argmax). It does NOT train students: the student Dice change per mode
is measured by ``bench/bench_compression_student.py`` (demo scenario). Writes JSON.

    python -m bench.bench_compression --size 96 --out bench/results/compression.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from common.compress import CompressionConfig, bytes_per_slice, compress_logits, decompress_logits
from common.io import strict_json_dumps
from common.kd.functional import fuse_probs, soft_dice_loss_per_sample, teacher_probs
from common.kd.fusion import build_weighting

MODES = {"fp32": CompressionConfig(mode="fp32"), "fp16": CompressionConfig(mode="fp16"),
         "int8_probs": CompressionConfig(mode="int8_probs"),
         "downsample_2": CompressionConfig(mode="downsample", downsample_factor=2),
         "downsample_4": CompressionConfig(mode="downsample", downsample_factor=4),
         "fp16_noise_0.05": CompressionConfig(mode="fp16", noise_sigma=0.05)}


def proxy_masks(size: int) -> torch.Tensor:
    """Foreground masks of a small phantom proxy set, resized to ``size``."""
    from common.data.phantom import make_proxy
    from coordinator.distill.proxy import load_proxy

    with tempfile.TemporaryDirectory() as tmp:
        proxy = load_proxy(make_proxy(Path(tmp), n_cases=4, seed=500, shape=(16, 64, 64)), size)
    masks = torch.from_numpy(proxy.masks).long()
    return masks[masks.flatten(1).sum(1) > 0]


def teachers(mask: torch.Tensor) -> list[np.ndarray]:
    """Three teachers' float32 logits ``(N,2,S,S)``: smooth noisy versions of the masks."""
    onehot = torch.nn.functional.one_hot(mask, 2).permute(0, 3, 1, 2).float()
    out = []
    for seed in (1, 2, 3):
        g = torch.Generator().manual_seed(seed)
        noise = torch.nn.functional.avg_pool2d(torch.randn(onehot.shape, generator=g), 3, 1, 1)
        out.append((3.0 * (2 * onehot - 1) + 4.0 * noise).numpy())
    return out


def fused_dice(logits: list[np.ndarray], mask: torch.Tensor) -> tuple[float, float]:
    """(soft, hard) Dice of the default-weighted fused target."""
    probs = teacher_probs(torch.stack([torch.from_numpy(x) for x in logits]), 1.0)
    fused = fuse_probs(probs, build_weighting("inverse_dice_loss")(probs, mask))
    soft = 1 - float(soft_dice_loss_per_sample(fused, mask).mean())
    pred, gt = (fused[:, 1] > 0.5).float().flatten(1), (mask == 1).float().flatten(1)
    hard = float(((2 * (pred * gt).sum(1) + 1) / (pred.sum(1) + gt.sum(1) + 1)).mean())
    return soft, hard


def run(size: int) -> dict:
    """Every mode's bytes and fused-target Dice (and its change vs fp32)."""
    mask = proxy_masks(size)
    raw = teachers(mask)
    rest = 2 * ((size // 2) ** 2 + (size // 8) ** 2) + 2 * 4  # at maps fp16 + rc scalars fp32
    ref = fused_dice(raw, mask)
    rows = {}
    rng = np.random.default_rng(0)
    for name, cfg in MODES.items():
        decoded = [decompress_logits(compress_logits(x, cfg, rng), cfg, size) for x in raw]
        soft, hard = fused_dice(decoded, mask)
        b = bytes_per_slice(cfg, size)
        rows[name] = {"logits_bytes_per_slice": b, "reply_bytes_per_slice": b + rest,
                      "fraction_of_fp32_logits": b / bytes_per_slice(MODES["fp32"], size),
                      "fused_soft_dice": soft, "fused_hard_dice": hard,
                      "soft_dice_change": soft - ref[0], "hard_dice_change": hard - ref[1]}
    return {"size": size, "slices": int(mask.shape[0]), "teachers": len(raw), "modes": rows}


def main() -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--out", type=Path, default=Path("bench/results/compression.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    res = run(args.size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(strict_json_dumps(res, indent=2) + "\n")
    for name, r in res["modes"].items():
        print(f"{name:<16} {r['logits_bytes_per_slice']:>7} B/slice "
              f"({r['fraction_of_fp32_logits']:.3f} of fp32)  "
              f"soft Dice {r['soft_dice_change']:+.4f}  hard Dice {r['hard_dice_change']:+.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
