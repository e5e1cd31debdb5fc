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
retrained (``identical_to_fp32``). ``int8_probs`` quantises at T = 1 (the codec default);
``int8_probs_T4`` at the demo's KD temperature, as a site does when the query carries it.
``null_jitter`` (std 0.001 on the logits) is a control: how far students move for nothing.
The change vs fp32 is paired per seed, with a 95 % t interval of its mean. Finished runs under
``--workdir`` are reused.

    OMP_NUM_THREADS=1 python -m bench.bench_compression_student \
        --config configs/demo_prostate.toml --seeds 0 1 \
        --out bench/results/compression_student.json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.bench_robustness import load_scenario, summarise_seeds, train_seed
from common.compress import CompressionConfig, bytes_per_slice
from common.io import strict_json_dumps
from common.kd.targets import TeacherTargets
from common.protocol import QueryConfig, decode_teacher_reply, encode_teacher_reply
from coordinator.distill.config import ExperimentConfig, WeightingSpec
from coordinator.distill.student import DistillData, StudentRun

MODES = {"fp32": CompressionConfig(mode="fp32"), "fp16": CompressionConfig(mode="fp16"),
         "int8_probs": CompressionConfig(mode="int8_probs"),
         "int8_probs_T4": CompressionConfig(mode="int8_probs", temperature=4.0),
         "downsample_2": CompressionConfig(mode="downsample", downsample_factor=2),
         "downsample_4": CompressionConfig(mode="downsample", downsample_factor=4),
         "fp16_noise_0.05": CompressionConfig(mode="fp16", noise_sigma=0.05),
         # null control: a negligible perturbation, to show how far a student moves for nothing
         "null_jitter": CompressionConfig(mode="fp32", noise_sigma=0.001, noise_on="logits")}
DEFAULT_MODES = ["fp32", "fp16", "int8_probs", "int8_probs_T4", "downsample_2",
                 "fp16_noise_0.05", "null_jitter"]


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


def _kd_target_kl(ref: TeacherTargets, dec: TeacherTargets, temperature: float) -> float:
    """Mean per-pixel KL(p_T ref || p_T decoded) of every teacher's softened class
    probabilities: how much the student's soft targets move (deterministic, unlike Dice)."""
    lr = torch.log_softmax(ref.logits.float() / temperature, 2)
    ld = torch.log_softmax(dec.logits.float() / temperature, 2)
    return float((lr.exp() * (lr - ld)).sum(2).mean())


def reply_extra_bytes(targets: TeacherTargets) -> int:
    """Bytes per slice of what is sent besides the logits: fp16 attention maps, fp32 scalars."""
    maps = targets.at_early.shape[-2:].numel() + targets.at_deep.shape[-2:].numel()
    return 2 * int(maps) + 2 * 4


def mode_row(name: str, data: DistillData, cfg: ExperimentConfig, seeds: list[int],
             workdir: Path, ref: dict | None) -> dict:
    """Bytes and the student's Dice for one mode (``ref``: the fp32 row, None for fp32 itself)."""
    assert isinstance(data.targets, TeacherTargets)  # load_scenario materialises
    comp = MODES[name]
    decoded = encode_decode(data.targets, comp, seed=1234)
    size = int(data.targets.logits.shape[-1])
    row: dict = {"mode": name, "config": comp.model_dump(),
                 "logits_bytes_per_slice": bytes_per_slice(comp, size),
                 "fraction_of_fp32": bytes_per_slice(comp, size) / bytes_per_slice(MODES["fp32"],
                                                                                  size),
                 "max_abs_prob_change": _prob_change(decoded, data.targets),
                 "kd_target_kl": _kd_target_kl(data.targets, decoded, cfg.kd.temperature)}
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


_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 11: 2.201}  # Student t, two-sided 95 %, by degrees of freedom


def paired_ci(diffs: list[float]) -> tuple[float, float]:
    """(sd, 95 % CI half-width) of the mean of paired differences (0, inf for one seed)."""
    if len(diffs) < 2:
        return 0.0, float("inf")
    sd = statistics.stdev(diffs)
    return sd, _T975.get(len(diffs) - 1, 1.96) * sd / len(diffs) ** 0.5


def _paired(rows: list[dict], ref: list[float], prefix: str) -> None:
    """Per-seed change of every row's mean Dice vs ``ref`` (one value per seed) + its CI."""
    for r in rows:
        per = [a["mean_dice"] - b for a, b in zip(r["per_seed"], ref, strict=True)]
        r[f"{prefix}_per_seed"] = per
        r[prefix] = statistics.fmean(per)
        r[f"{prefix}_sd"], r[f"{prefix}_ci95"] = paired_ci(per)


def add_changes(rows: list[dict]) -> None:
    """Student mean-Dice change vs fp32 (``dice_change``) and, when the null control ran, vs the
    uncompressed pool: per seed the mean of the fp32 and null-jitter students
    (``dice_change_vs_pool``) and vs the null student alone (``dice_change_vs_null``, a
    perturbed run like every compressed one), all paired per seed with a 95 % CI of the mean."""
    _paired(rows, [s["mean_dice"] for s in rows[0]["per_seed"]], "dice_change")
    null = [r for r in rows if r["mode"] == "null_jitter"]
    if null:
        pool = [(a["mean_dice"] + b["mean_dice"]) / 2
                for a, b in zip(rows[0]["per_seed"], null[0]["per_seed"], strict=True)]
        _paired(rows, pool, "dice_change_vs_pool")
        _paired(rows, [s["mean_dice"] for s in null[0]["per_seed"]], "dice_change_vs_null")


def markdown(res: dict) -> str:
    """The result table."""
    sites, pool = res["sites"], "dice_change_vs_pool" in res["rows"][0]
    head = ["mode", "logits B/slice", "of fp32", "KD target KL/px", *[f"{s} Dice" for s in sites],
            "mean Dice",
            "change vs fp32 (95 % CI)", "per seed"]
    head += ["change vs fp32+null pool (95 % CI)", "change vs null (95 % CI)"] if pool else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["rows"]:
        per = " / ".join(f"{d:+.3f}" for d in r["dice_change_per_seed"])
        cells = [r["mode"], f"{r['logits_bytes_per_slice']:,}", f"{r['fraction_of_fp32']:.4g}",
                 f"{r['kd_target_kl']:.2g}", *[f"{r['sites'][s]:.3f}" for s in sites],
                 f"{r['mean_dice']:.4f}",
                 _ci(r, "dice_change"), per + (" (same logits)" if r["identical_to_fp32"]
                                                else "")]
        cells += [_ci(r, "dice_change_vs_pool"), _ci(r, "dice_change_vs_null")] if pool else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ci(r: dict, key: str) -> str:
    return f"{r[key]:+.4f} (+-{r[key + '_ci95']:.4f})"


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
    assert isinstance(data.targets, TeacherTargets)  # load_scenario materialises
    res = {"config": str(args.config), "seeds": args.seeds, "epochs": cfg.student.epochs,
           "size": cfg.student.size, "sites": data.site_names, "weighting": "inverse_dice_loss",
           "reply_extra_bytes_per_slice": reply_extra_bytes(data.targets),
           "torch_threads": torch.get_num_threads(), "rows": rows,
           "wall_seconds": time.perf_counter() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(strict_json_dumps(res, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res) + f"wrote {args.out}")


if __name__ == "__main__":
    main()
