"""``site-node check``: verify the data folder, print its fingerprint and what a run will cost.

Prints, in order: the fingerprint (:func:`common.data.fingerprint.format_fingerprint`), the plan
it implies (in-plane spacing, canvas side, normalisation; the same
:func:`~common.data.plan.plan_from_fingerprint` training uses, and whether scans are wider than
the canvas, so that inference tiles them), the estimated memory (the preprocessed training
volumes plus the teacher's weights, gradients and Adam state), and, unless
``--time-steps 0``, a **measured** time per training step of the chosen teacher on this machine
(``--time-steps`` timed forward / backward / Adam steps at the plan's canvas and the training
batch size, after one warm-up step) with the projected epoch and total time
(``steps per epoch = ceil(training slices / batch)``, an upper bound: training also drops part
of the organ-free slices; validation passes are not included). A folder holding DICOM instead
of NIfTI is pointed to ``site-node import-dicom``.
"""

from __future__ import annotations

import argparse
import math
import resource
import time
from pathlib import Path
from typing import Any

from common.data.fingerprint import Fingerprint
from common.data.plan import Plan

DEFAULT_TIME_STEPS = 3


def add_check_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``site-node check``."""
    p.add_argument("--data", type=Path, required=True, help="MSD/nnU-Net or multi-site folder")
    p.add_argument("--out", type=Path, default=Path("."),
                   help="folder to write fingerprint.json to (a path ending in .json is "
                        "taken as the file itself)")
    p.add_argument("--label", help="target label: name, value, '1,2' or 'all' "
                                   "(default: the single declared foreground label)")
    p.add_argument("--model", help="teacher to size the run for (default: the train default)")
    p.add_argument("--size", type=int, help="network input side (default: from the plan)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="training batch size")
    p.add_argument("--epochs", type=int, help="epochs to project (default: the train default)")
    p.add_argument("--time-steps", dest="time_steps", type=int, default=DEFAULT_TIME_STEPS,
                   help="timed training steps for the estimate (0: skip the measurement)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def main_check(args: argparse.Namespace) -> int:
    """Fingerprint the data folder as training would read it; write it (it stays local); print
    the plan and the sizing of a run."""
    from common.data.errors import data_error, refuse_inside
    from common.data.fingerprint import (
        compute_fingerprint,
        ct_units_note,
        format_fingerprint,
        save_fingerprint,
    )
    from common.data.layout import discover_dataset
    from common.data.split import MIN_SPLIT_CASES

    out = fingerprint_path(args.out)
    refuse_inside(out, args.data)
    info = discover_dataset(args.data)  # a DICOM folder: one line pointing to import-dicom
    fp = compute_fingerprint(info, label=args.label)
    print(format_fingerprint(fp))
    if (note := ct_units_note(fp)) is not None:
        print(f"warning: {note}")
    print(f"wrote {save_fingerprint(fp, out)} (aggregate only; stays on this site)")
    cfg = _train_config(args)
    plan = _plan(fp, cfg)
    print(format_plan(plan, fp))
    if fp.n_cases < MIN_SPLIT_CASES:  # before the (costly) timed steps
        raise data_error(args.data, f"only {fp.n_cases} case(s): `site-node train` needs at "
                         f"least {MIN_SPLIT_CASES} (or small_site = \"train_on_all\")")
    n_train = _train_cases([c.case_id for c in info.cases], cfg)
    print(format_sizing(plan, fp, cfg, n_train, args.time_steps))
    return 0


def fingerprint_path(out: Path) -> Path:
    """``--out``: a folder gets ``fingerprint.json`` inside; a path ending in ``.json`` is the
    file itself (the earlier form of the flag)."""
    return out if out.suffix.lower() == ".json" else out / "fingerprint.json"


def _train_config(args: argparse.Namespace) -> Any:
    """The train defaults with this command's overrides (validated as ``train`` does)."""
    from site_node.train_config import TeacherTrainConfig

    overrides = {k: getattr(args, k) for k in ("model", "size", "batch_size", "epochs", "device",
                                                "label") if getattr(args, k, None) is not None}
    return TeacherTrainConfig.model_validate({**TeacherTrainConfig().model_dump(), **overrides})


def _plan(fp: Fingerprint, cfg: Any) -> Plan:
    from common.data.plan import plan_from_fingerprint

    return plan_from_fingerprint(fp, size=cfg.size)


def _train_cases(ids: list[str], cfg: Any) -> int:
    """Training cases of the split ``train`` would make (all of them below the split minimum)."""
    from common.data.split import MIN_SPLIT_CASES, split_cases

    if len(ids) < MIN_SPLIT_CASES:
        return len(ids)
    return len(split_cases(ids, cfg.val_fraction, cfg.test_fraction, cfg.seed).train)


def format_plan(plan: Plan, fp: Fingerprint) -> str:
    """The preprocessing plan in one block."""
    if plan.norm == "ct":
        (lo, hi), mean, std = plan.ct_params()
        norm = f"CT: clip {lo:g} .. {hi:g}, then (x - {mean:g}) / {std:g}"
    else:
        lo_p, hi_p = plan.mri_percentiles
        norm = f"MRI: clip each volume to its p{lo_p:g} .. p{hi_p:g}, then z-score per volume"
    sp = plan.spacing or (0.0, 0.0)
    field = [float(fp.shape_max[i]) * float(fp.spacing_max[i]) for i in (1, 2)]
    px = [math.ceil(f / s) for f, s in zip(field, sp, strict=True)] if plan.spacing else [0, 0]
    wide = (f"the largest field ({field[0]:g} x {field[1]:g} mm) is {px[0]} x {px[1]} px: "
            "inference tiles it with overlapping windows" if max(px) > plan.size else
            "every field of view fits the canvas")
    return "\n".join([
        f"plan: in-plane spacing {sp[0]:g} x {sp[1]:g} mm (y, x), slice spacing kept, "
        f"canvas {plan.size} x {plan.size} px",
        f"plan: normalisation {norm}",
        f"plan: {wide}",
    ])


def format_sizing(plan: Plan, fp: Fingerprint, cfg: Any, n_train: int, steps: int) -> str:
    """Estimated memory and (measured) time of ``train`` with ``cfg``."""
    slices = int(round(n_train * float(fp.shape_median[0])))
    per_epoch = max(1, math.ceil(slices / cfg.batch_size))
    data_mb = n_train * float(fp.shape_median[0]) * plan.size ** 2 * 5 / 2 ** 20
    lines = [f"run: {cfg.model}, {n_train} training case(s) ~ {slices} slices, batch "
             f"{cfg.batch_size}: <= {per_epoch} steps per epoch, {cfg.epochs} epochs"]
    if steps <= 0:
        return "\n".join([*lines, f"memory: ~{data_mb:.0f} MB of preprocessed volumes "
                                  "(step time not measured: --time-steps 0)"])
    sec, params, peak_mb = time_training_steps(cfg, plan.size, steps)
    model_mb = params * 16 / 2 ** 20  # fp32 weights + gradients + Adam's two moments
    lines += [f"memory: ~{data_mb:.0f} MB of preprocessed volumes + {model_mb:.0f} MB of "
              f"weights, gradients and Adam state; the timed steps grew the peak RSS by "
              f"{peak_mb:.0f} MB",
              f"time: {sec:.2f} s per training step (measured, {steps} step(s) at "
              f"{cfg.batch_size} x 1 x {plan.size} x {plan.size}); projected "
              f"{_duration(sec * per_epoch)} per epoch, {_duration(sec * per_epoch * cfg.epochs)}"
              f" for {cfg.epochs} epochs (without validation passes)"]
    return "\n".join(lines)


def time_training_steps(cfg: Any, size: int, steps: int) -> tuple[float, int, float]:
    """(median seconds per step, parameter count, peak RSS growth MB) of ``steps`` training
    steps of ``cfg.model`` on random ``(batch, 1, size, size)`` input, after a warm-up."""
    import torch

    from common.kd.losses import SegLoss
    from common.models import build_model, count_params
    from common.training import select_device

    device = select_device(cfg.device)
    torch.manual_seed(0)
    model = build_model(cfg.model, in_channels=1, num_classes=2).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = SegLoss(cfg.dice_weight, cfg.lovasz_weight)
    x = torch.randn(cfg.batch_size, 1, size, size, device=device)
    y = (torch.rand(cfg.batch_size, size, size, device=device) > 0.8).long()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first step warms up (allocations, kernels)
            times.append(time.perf_counter() - t0)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    times.sort()
    return times[len(times) // 2], int(count_params(model)), max(0, peak_kb) / 1024


def _duration(seconds: float) -> str:
    """``2 h 05 min`` / ``3 min 20 s`` / ``12 s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s // 60 % 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


__all__ = ["add_check_args", "format_plan", "format_sizing", "main_check",
           "time_training_steps"]
