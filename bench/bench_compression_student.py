"""Benchmark: wire bytes per proxy slice and the *student* Dice change for each logits encoding.

On the demo scenario (``configs/demo_prostate.toml``: three phantom prostate sites, cached
teacher outputs, ENet student, the config's epochs) every site's teacher logits are passed
through :func:`common.compress.compress_logits` and :func:`common.compress.decompress_logits`
(exactly the site's encoder and the coordinator's decoder), then the default multi-teacher
student (``inverse_dice_loss``, all sites) is trained by the engine's ``train_student`` with
the same seed(s) as the fp32 reference and scored on every site's held-out volumes (3D Dice).
Attention maps and region-contrast scalars are sent unchanged except that a noise setting noises
them too (``common.compress.noise_features``), as on the wire.

The fp32 reference is the cached teacher output (stored fp16, as a rerun and the wire see it),
so ``fp16`` decodes to bit-identical logits: its student is the fp32 student and is not
retrained (``identical_to_fp32``). Finished runs under ``--workdir`` are reused.

    OMP_NUM_THREADS=1 python -m bench.bench_compression_student \
        --config configs/demo_prostate.toml --seeds 0 1 \
        --out bench/results/compression_student.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.bench_robustness import load_scenario, summarise_seeds, train_seed
from common.compress import CompressionConfig, bytes_per_slice
from common.kd.targets import TeacherTargets
from common.protocol import QueryConfig, decode_teacher_reply, encode_teacher_reply
from coordinator.distill.config import ExperimentConfig, WeightingSpec
from coordinator.distill.student import DistillData, StudentRun

MODES = {"fp32": CompressionConfig(mode="fp32"), "fp16": CompressionConfig(mode="fp16"),
         "int8_probs": CompressionConfig(mode="int8_probs"),
         "downsample_2": CompressionConfig(mode="downsample", downsample_factor=2),
         "downsample_4": CompressionConfig(mode="downsample", downsample_factor=4),
         "fp16_noise_0.05": CompressionConfig(mode="fp16", noise_sigma=0.05)}
DEFAULT_MODES = ["fp32", "fp16", "int8_probs", "downsample_2", "fp16_noise_0.05"]


def encode_decode(targets: TeacherTargets, cfg: CompressionConfig, seed: int) -> TeacherTargets:
    """Every site's targets ``(J, N, ...)`` as the coordinator decodes them under ``cfg``: each
    site's reply goes through the real wire path, ``encode_teacher_reply`` (site) then
    ``decode_teacher_reply`` (coordinator), noise drawn from a seeded generator."""
    n, size = targets.batch_size, int(targets.logits.shape[-1])
    query = QueryConfig(run_id="bench", chunk=0, n_chunks=1, size=size,
                        slice_hashes=[""] * n)
    sites = []
    for j in range(targets.num_teachers):
        reply = encode_teacher_reply(f"site{j}", query, targets.teacher(j), cfg,
                                     np.random.default_rng([seed, j]))
        sites.append(decode_teacher_reply(reply, n, size, "bench")[1])
    return TeacherTargets.stack(sites)


def _prob_change(a: TeacherTargets, b: TeacherTargets) -> float:
    """Largest change of any teacher's class probability (T = 1) over all pixels."""
    return float((torch.softmax(a.logits, 2) - torch.softmax(b.logits.float(), 2)).abs().max())


def reply_extra_bytes(targets: TeacherTargets) -> int:
    """Bytes per slice of what is sent besides the logits: fp16 attention maps, fp32 scalars."""
    maps = targets.at_early.shape[-2:].numel() + targets.at_deep.shape[-2:].numel()
    return 2 * int(maps) + 2 * 4


def mode_row(name: str, data: DistillData, cfg: ExperimentConfig, seeds: list[int],
             workdir: Path, ref: dict | None) -> dict:
    """Bytes and the student's Dice for one mode (``ref``: the fp32 row, None for fp32 itself)."""
    assert data.targets is not None
    comp = MODES[name]
    decoded = encode_decode(data.targets, comp, seed=1234)
    size = int(data.targets.logits.shape[-1])
    row: dict = {"mode": name, "config": comp.model_dump(),
                 "logits_bytes_per_slice": bytes_per_slice(comp, size),
                 "fraction_of_fp32": bytes_per_slice(comp, size) / bytes_per_slice(MODES["fp32"],
                                                                                  size),
                 "max_abs_prob_change": _prob_change(decoded, data.targets)}
    row["identical_to_fp32"] = ref is not None and torch.equal(decoded.logits, data.targets.logits)
    if row["identical_to_fp32"]:
        assert ref is not None
        row.update({k: ref[k] for k in ("mean_dice", "range", "sites", "per_seed")})
    else:
        run = StudentRun(f"multi_{name}", list(range(len(data.site_names))),
                         WeightingSpec(name="inverse_dice_loss"))
        row.update(summarise_seeds([train_seed(run, dataclasses.replace(data, targets=decoded),
                                               cfg, s, workdir) for s in seeds]))
    return row


def add_changes(rows: list[dict]) -> None:
    """Student mean-Dice change vs fp32, averaged over seeds and per (same) seed."""
    ref = rows[0]
    for r in rows:
        per = [a["mean_dice"] - b["mean_dice"]
               for a, b in zip(r["per_seed"], ref["per_seed"], strict=True)]
        r["dice_change_per_seed"] = per
        r["dice_change"] = statistics.fmean(per)


def markdown(res: dict) -> str:
    """The result table."""
    sites = res["sites"]
    head = ["mode", "logits B/slice", "of fp32", *[f"{s} Dice" for s in sites], "mean Dice",
            "Dice change vs fp32", "per seed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["rows"]:
        per = " / ".join(f"{d:+.4f}" for d in r["dice_change_per_seed"])
        cells = [r["mode"], f"{r['logits_bytes_per_slice']:,}", f"{r['fraction_of_fp32']:.4g}",
                 *[f"{r['sites'][s]:.3f}" for s in sites], f"{r['mean_dice']:.4f}",
                 f"{r['dice_change']:+.4f}", per + (" (same logits)" if r["identical_to_fp32"]
                                                   else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("configs/demo_prostate.toml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=DEFAULT_MODES)
    p.add_argument("--workdir", type=Path, default=Path("demo_out/bench_compression"))
    p.add_argument("--out", type=Path, default=Path("bench/results/compression_student.json"))
    p.add_argument("--epochs", type=int, default=None, help="override (smoke tests only)")
    args = p.parse_args()
    t0 = time.perf_counter()
    cfg, data = load_scenario(args.config, args.epochs)
    modes = ["fp32", *[m for m in args.modes if m != "fp32"]]
    rows: list[dict] = []
    for name in modes:
        rows.append(mode_row(name, data, cfg, args.seeds, args.workdir, rows[0] if rows else None))
    add_changes(rows)
    assert data.targets is not None
    res = {"config": str(args.config), "seeds": args.seeds, "epochs": cfg.student.epochs,
           "size": cfg.student.size, "sites": data.site_names, "weighting": "inverse_dice_loss",
           "reply_extra_bytes_per_slice": reply_extra_bytes(data.targets),
           "torch_threads": torch.get_num_threads(), "rows": rows,
           "wall_seconds": time.perf_counter() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res) + f"wrote {args.out}")


if __name__ == "__main__":
    main()
