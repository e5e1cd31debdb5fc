"""Export a trained student for CPU inference (torch.export, ONNX, int8), with a model card.

:func:`export_student` writes ``student.pt2`` (:func:`torch.export.export`, dynamic batch),
``student.onnx`` (opset 17), ``student.pt`` (state dict, the ``eager`` runtime),
``student.int8.onnx`` (ONNX Runtime static int8, calibrated on the coordinator's proxy slices
only), optionally ``student.aoti.pt2`` (``aoti=True``: an AOTInductor package compiled from the
``.pt2``, :mod:`coordinator.aoti`; minutes of C++ compilation) and ``model_card.json`` (all
atomically). Conv+BN pairs are folded and ENet's
MaxUnpool swapped for a scatter in the exported graphs. Each file is verified against the eager
fp32 model (pt2 within 1e-4, the ONNX graph through ``onnx.checker``, every runtime's argmax
agreement on proxy slices) and timed; the card records each runtime's precision, agreement,
proxy Dice and latency. :func:`export_best_multi` picks the default-weighting multi-teacher
run of an experiment and exports it to ``<out>/export/``.

Each file carries the student's preprocessing plan (:class:`common.data.plan.Plan` as JSON) so
that ``coordinator predict`` needs no other file: ONNX ``metadata_props`` key
:data:`common.inference.predict.PLAN_KEY`, the ``.pt2`` extra file
:data:`common.inference.predict.PLAN_EXTRA_FILE`,
the ``student.pt`` key ``plan`` and ``model_card.json["plan"]``.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.utils import _pair

from common.inference.predict import PLAN_EXTRA_FILE, PLAN_KEY
from common.inference.runtimes import FILES, fastest, runtime_report
from common.io import atomic_torch_save, atomic_write_bytes, atomic_write_json
from common.models.base import SegModel, count_params
from common.models.checkpoint import model_state
from coordinator.aoti import TARGET, compile_aoti
from coordinator.distill.proxy import ProxySet
from coordinator.quantize import quantize_student

if TYPE_CHECKING:
    from coordinator.distill.config import ExperimentConfig
    from coordinator.distill.results_file import ResultRow

OPSET = 17
TOLERANCE = 1e-4
log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """An exported file failed verification; the message names the file."""


class ScatterUnpool(nn.Module):
    """``nn.MaxUnpool2d(2, 2)`` as a scatter: traceable, and ONNX-exportable (ScatterElements).

    torch 2.14's ``max_unpool2d`` cannot be traced (its output-size check gets tensors) and has
    no ONNX symbolic, so ENet's unpooling is swapped for this equivalent in the export copy.
    """

    def __init__(self, unpool: nn.MaxUnpool2d) -> None:
        super().__init__()
        self.factor = int(_pair(unpool.stride)[0])

    def forward(self, x: torch.Tensor, idx: torch.Tensor, output_size: Any = None) -> torch.Tensor:
        """Place ``x`` at the flat per-plane ``idx`` of a zero map ``factor`` times larger."""
        b, c, h, w = x.shape
        f = self.factor
        flat = torch.zeros(b, c, h * f * w * f, dtype=x.dtype, device=x.device)
        return flat.scatter(2, idx.flatten(2), x.flatten(2)).view(b, c, h * f, w * f)


def _is_plain_unpool(u: nn.MaxUnpool2d) -> bool:
    """Square, non-overlapping, unpadded unpooling (what :class:`ScatterUnpool` reproduces)."""
    k, st, pad = _pair(u.kernel_size), _pair(u.stride), _pair(u.padding)
    return k == st and k[0] == k[1] and pad == (0, 0)


def exportable(model: SegModel, fold: bool = True) -> SegModel:
    """A deep copy of ``model`` in eval mode with every non-traceable module replaced by an
    equivalent and (``fold``) every Conv+BatchNorm pair folded into the conv
    (:func:`common.inference.runtimes.fold_conv_bn`, checked to keep the output within 1e-4)."""
    from common.inference.runtimes import fold_conv_bn

    out = copy.deepcopy(model).eval()
    for mod in list(out.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.MaxUnpool2d) and _is_plain_unpool(child):
                setattr(mod, name, ScatterUnpool(child))
    if fold:
        fold_conv_bn(out, _example(64, 2))
    return out


def _example(size: int, batch: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 1, size, size, generator=gen)


def export_pt2(model: SegModel, x: torch.Tensor, path: Path,
               extra_files: dict[str, str] | None = None) -> float:
    """:func:`torch.export.export` ``model.forward`` (dynamic batch) on ``x`` (batch >= 2), save
    to ``path`` with ``extra_files`` (e.g. the plan); return max |reloaded - eager|."""
    from common.inference.runtimes import load_pt2

    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(exportable(model), (x,), dynamic_shapes=({0: batch},))
        buf = io.BytesIO()
        torch.export.save(program, buf, extra_files=extra_files or {})
        atomic_write_bytes(path, buf.getvalue())
        reloaded = load_pt2(path)
        diffs = [float((reloaded(v) - model(v)).abs().max()) for v in (x, x[:1].flip(-1) * 0.5)]
    diff = max(diffs)
    if not diff < TOLERANCE:
        raise ExportError(f"{path}: torch.export output differs from the eager model by "
                          f"{diff:.2e}")
    return diff


def export_onnx(model: SegModel, x: torch.Tensor, path: Path,
                metadata: dict[str, str] | None = None) -> int:
    """Export ``model.forward`` (Conv+BN folded) to ONNX (opset 17, dynamic batch) with
    ``metadata`` in its ``metadata_props``, check it; return node count."""
    import onnx

    buf: Any = io.BytesIO()  # torch's stubs say path-only; file objects work with dynamo=False
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(exportable(model), (x,), buf, opset_version=OPSET, dynamo=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    graph = onnx.load_from_string(buf.getvalue())
    if metadata:
        onnx.helper.set_model_props(graph, metadata)
    try:
        onnx.checker.check_model(graph)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: ONNX graph failed the checker: {exc}") from exc
    atomic_write_bytes(path, graph.SerializeToString())
    return len(graph.graph.node)


def fedmtkd_version() -> str:
    """The installed ``fedmtkd`` version ("unknown" when run from a bare checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedmtkd")
    except PackageNotFoundError:
        return "unknown"


def export_student(model: SegModel, out_dir: Path, size: int, card: dict,
                   plan: dict | None = None, spec: dict | None = None,
                   proxy: ProxySet | None = None, aoti: bool = False,
                   aoti_target: str | None = TARGET) -> dict[str, Path]:
    """Write, verify and time the student's runtimes and ``model_card.json`` in ``out_dir``.

    Files (:data:`common.inference.runtimes.FILES`): ``student.pt2`` (torch.export),
    ``student.onnx``
    (fp32), ``student.pt`` (the state dict, for the ``eager`` runtime; only with ``spec`` =
    ``{"model_name", "model_kwargs"}``) and ``student.int8.onnx`` (only with ``proxy``: static
    int8 calibrated on the coordinator's proxy slices, :func:`coordinator.quantize.
    quantize_student`) and ``student.aoti.pt2`` (only with ``aoti`` and a C++ compiler:
    :func:`coordinator.aoti.compile_aoti` for ``aoti_target``). Conv+BN pairs are folded in the
    pt2/ONNX graphs. ``card`` adds to (and may override) the computed fields; ``plan`` (a
    :class:`common.data.plan.Plan` as JSON dict, ``size`` equal to ``size``) goes into every
    file. The card's ``runtimes`` give per runtime
    its precision, agreement with eager fp32 (on proxy slices, else random inputs) and measured
    batch-1 latency; ``default_runtime`` is the fastest one with agreement >= 99.5 %.
    Returns the paths keyed by runtime name and ``card``.
    """
    if plan is not None and int(plan.get("size", size)) != size:
        raise ExportError(f"{out_dir}: plan size {plan.get('size')} != export size {size}")
    model = model.eval().cpu()
    text = json.dumps(plan, sort_keys=True) if plan is not None else None
    paths = {r: out_dir / FILES[r] for r in ("pt2", "onnx")}
    diff = export_pt2(model, _example(size, 2), paths["pt2"],
                      {PLAN_EXTRA_FILE: text} if text else None)
    nodes = export_onnx(model, _example(size), paths["onnx"], {PLAN_KEY: text} if text else None)
    if spec is not None:
        paths["eager"] = out_dir / FILES["eager"]
        atomic_torch_save(paths["eager"], {**model_state(model, spec["model_name"],
                                                         dict(spec["model_kwargs"])),
                                           **({"plan": plan} if plan else {})})
    extra: dict[str, Any] = {}
    compiled = (compile_aoti(paths["pt2"], out_dir / FILES["aoti"], model, _example(size, 2),
                             aoti_target) if aoti else None)
    if compiled is not None:
        paths["aoti"] = out_dir / FILES["aoti"]
    elif (out_dir / FILES["aoti"]).exists():  # a former export's package: another model
        (out_dir / FILES["aoti"]).unlink()
        log.info("[export] removed the former export's %s", out_dir / FILES["aoti"])
    if proxy is not None:
        paths["onnx-int8"] = out_dir / FILES["onnx-int8"]
        extra["calibration"] = quantize_student(paths["onnx"], paths["onnx-int8"], proxy)
    x, masks = _check_inputs(size, proxy)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    report = runtime_report(paths, ref, x, masks)
    if compiled is not None:
        report["aoti"].update(compiled)  # target (checked by the loader), compile_s
    paths["card"] = out_dir / "model_card.json"
    full: dict[str, Any] = {
        "architecture": type(model).__name__, "params": count_params(model),
        "input": {"shape": [1, 1, size, size], "in_channels": 1, "size": size,
                  "dtype": "float32", "name": "image"},
        "output": {"name": "logits", "shape": [1, int(ref.shape[1]), size, size]},
        "files": {r: p.name for r, p in paths.items() if r != "card"},
        "runtimes": report, **extra,
        "default_runtime": fastest({r: v["latency"]["median_ms"] for r, v in report.items()},
                                   report, {r: v["agreement"] for r, v in report.items()}),
        "verification": {"pt2_max_abs_diff": diff, "onnx_checker": "passed",
                         "onnx_opset": OPSET, "onnx_nodes": nodes,
                         "inputs": "proxy slices" if proxy is not None else "random"},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fedmtkd_version": fedmtkd_version(),
        **({"plan": plan} if plan is not None else {}),
        **card,
    }
    atomic_write_json(paths["card"], full)
    return paths


def _check_inputs(size: int, proxy: ProxySet | None, n: int = 64
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to ``n`` evenly spread proxy slices and their masks, else 4 random images."""
    if proxy is None or len(proxy) == 0 or proxy.images.shape[-1] != size:
        return _example(size, 4).numpy(), None
    idx = np.unique(np.linspace(0, len(proxy) - 1, min(n, len(proxy))).round().astype(int))
    return proxy.images[idx].astype(np.float32), proxy.masks[idx]


def mean_fusion_weights(metrics_csv: Path, sites: list[str]) -> dict[str, float]:
    """Mean of the ``w<j>`` columns of a student run's ``metrics.csv``, keyed by site name."""
    if not metrics_csv.is_file():
        return {}
    with metrics_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for j, site in enumerate(sites):
        vals = [float(r[f"w{j}"]) for r in rows if r.get(f"w{j}") not in (None, "")]
        if vals:
            out[site] = sum(vals) / len(vals)
    return out


def pick_default_multi(rows: list[ResultRow], cfg: ExperimentConfig) -> ResultRow | None:
    """The row of the multi-teacher run with the config's first (default) weighting rule."""
    multi = [r for r in rows if str(r.get("run", "")).startswith("multi_")]
    if cfg.runs.weightings:
        wanted = f"multi_{cfg.runs.weightings[0].label}"
        multi = [r for r in multi if r["run"] == wanted] or multi
    return multi[0] if multi else None


def _site_metrics(row: ResultRow) -> dict[str, dict[str, float]]:
    keys = ("dice_mean", "voe_mean", "hd95_mean", "n")
    return {site: {k: s[k] for k in keys if k in s} for site, s in row.get("sites", {}).items()}


def exchanged_bytes(out: Path) -> dict[str, Any] | None:
    """Array bytes per message type and direction from ``<out>/audit/coordinator.jsonl``."""
    from common.audit.keys import AuditError
    from common.audit.log import summarise_log

    path = out / "audit" / "coordinator.jsonl"
    if not path.is_file():
        return None
    try:
        by_type = summarise_log(path)["bytes"]
    except (AuditError, ValueError, OSError) as exc:
        log.warning("%s: unreadable exchange log (%s); bytes not reported", path, exc)
        return None
    total = sum(int(b) for per_dir in by_type.values() for b in per_dir.values())
    return {"total": total, "by_type": by_type}


def result_rows(out: Path) -> list[ResultRow]:
    """Result rows of an experiment folder: ``results.json`` (written by both transports),
    else each run's ``runs/<run>/summary.json`` (mean over seeds) or ``result.json``."""
    import json

    from coordinator.distill.results_file import FILE, read_rows

    if (out / FILE).is_file():
        return read_rows(out)
    rows = []
    for run in sorted(p for p in out.glob("runs/*") if p.is_dir()):
        for name in ("summary.json", "result.json"):  # summary.json: mean over seeds
            if (run / name).is_file():
                rows.append(json.loads((run / name).read_text()))
                break
    return rows


def student_plan(ckpt: dict, cfg: ExperimentConfig) -> dict:
    """The preprocessing plan the student was trained with, as JSON: the checkpoint's ``plan``
    when it records one, else the proxy set's plan recomputed exactly as
    :func:`coordinator.distill.proxy.load_proxy` makes it (fingerprint of ``cfg.proxy`` at the
    student size, ``cfg.proxy_label``); the default plan with a warning when the proxy set
    cannot be read."""
    if ckpt.get("plan"):
        return dict(ckpt["plan"])
    from common.data.errors import DataError
    from common.data.fingerprint import plan_for_dataset
    from common.data.layout import discover_dataset
    from common.data.plan import default_plan

    try:
        plan = plan_for_dataset(discover_dataset(cfg.proxy), cfg.student.size, cfg.proxy_label,
                                fill=cfg.student.fills_canvas)
    except DataError as exc:
        log.warning("proxy set unreadable (%s); the exported plan is the default MRI plan", exc)
        plan = default_plan("MRI", cfg.student.size)
    return plan.model_dump(mode="json")


def main_export(args: Any) -> int:
    """Handler of ``coordinator export``; 1 when there is no multi-teacher run to export."""
    from common.config import load_config
    from coordinator.distill.config import ExperimentConfig

    cfg = load_config(args.config, ExperimentConfig).resolve_paths(args.config.parent.resolve())
    out = args.out.resolve() if args.out is not None else cfg.out
    aoti = bool(getattr(args, "aoti", False))
    return 0 if export_best_multi(out, result_rows(out), cfg, aoti=aoti) is not None else 1


def _proxy_or_none(cfg: ExperimentConfig) -> ProxySet | None:
    """The proxy set at the student size (int8 calibration data), None with a warning when it
    cannot be read (then no int8 model is exported)."""
    from common.data.errors import DataError
    from coordinator.distill.proxy import load_proxy

    try:
        return load_proxy(cfg.proxy, cfg.student.size, cfg.proxy_label,
                          fill=cfg.student.fills_canvas)
    except DataError as exc:
        log.warning("proxy set unreadable (%s); no int8 model exported", exc)
        return None


def export_best_multi(out: Path, rows: list[ResultRow], cfg: ExperimentConfig,
                      bytes_exchanged: int | None = None, aoti: bool = False
                      ) -> dict[str, Path] | None:
    """Export ``<out>/runs/<default multi run>/last.pt`` to ``<out>/export/`` (``aoti``: with
    the AOTInductor package too).

    Returns the written paths, or ``None`` (with one logged warning) when ``rows`` hold no
    multi-teacher run.
    """
    from common.models.checkpoint import load_model

    row = pick_default_multi(rows, cfg)
    if row is None:
        log.warning("no multi-teacher run in the results; nothing exported")
        return None
    folder = Path(row.get("checkpoint_dir") or out / "runs" / row["run"])
    model, ckpt = load_model(folder / "last.pt")
    sites = list(row.get("teachers", []))
    card: dict[str, Any] = {
        "architecture": ckpt["model_name"], "experiment": cfg.name, "run": row["run"],
        "weighting": row.get("weighting"), "sites": sites,
        "fusion_weights": mean_fusion_weights(folder / "metrics.csv", sites),
        "site_metrics": _site_metrics(row), "mean_dice": row.get("mean_dice"),
        "epochs": int(ckpt.get("epoch", -1)) + 1, "source_checkpoint": str(folder / "last.pt"),
    }
    traffic = exchanged_bytes(out)
    if traffic is not None:
        card["bytes_by_message_type"] = traffic["by_type"]
    if bytes_exchanged is not None or traffic is not None:
        card["bytes_exchanged"] = int(bytes_exchanged if bytes_exchanged is not None
                                      else traffic["total"] if traffic else 0)
    spec = {"model_name": ckpt["model_name"], "model_kwargs": ckpt["model_kwargs"]}
    paths = export_student(model, out / "export", cfg.student.size, card,
                           plan=student_plan(ckpt, cfg), spec=spec, proxy=_proxy_or_none(cfg),
                           aoti=aoti)
    log.info("[export] %s: %s", row["run"], ", ".join(str(p) for p in paths.values()))
    return paths
