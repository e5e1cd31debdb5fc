"""Segment a folder of NIfTI images: one mask per image on the image's own grid.

A :class:`Predictor` is a preprocessing :class:`~common.data.plan.Plan` plus a function from a
prepared ``(D, S, S)`` volume to ``(D, K, S, S)`` softmax probabilities. It comes from

* a teacher run folder (:func:`load_teacher`: ``best.pt`` + the plan in ``teacher.json``), or
* an exported student (:func:`load_export`): runtime ``eager`` (``student.pt``), ``pt2``
  (``student.pt2``, torch.export), ``onnx`` (``student.onnx``) or ``onnx-int8``
  (``student.int8.onnx``) through :mod:`common.inference.runtimes`; ``auto`` picks the fastest
  the model card measured (:func:`pick_runtime`); legacy ``student.ts`` (TorchScript) still
  loads. The export carries its plan: ONNX ``metadata_props[PLAN_KEY]``, the ``.pt2`` extra file
  :data:`PLAN_EXTRA_FILE`, ``student.pt["plan"]``, and ``model_card.json["plan"]`` beside them.

:func:`predict_folder` prepares each image with the plan (:func:`common.data.native.prepare_image`),
predicts, maps the probabilities back to the native grid (:func:`~common.data.native.to_native`)
and writes a uint8 mask with the input's affine and header. Both roles' ``predict`` commands
call this module, so neither imports the other.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.data.errors import DataError, data_error, utf8_name
from common.data.plan import Plan
from common.data.teacher_card import TeacherCard, TeacherCardError

log = logging.getLogger(__name__)

PLAN_KEY = "fedmtkd_plan"  # ONNX metadata_props key and model_card.json field "plan"
PLAN_EXTRA_FILE = "fedmtkd_plan.json"  # .pt2 (and legacy TorchScript) extra-files entry
RUNTIMES = ("auto", "eager", "pt2", "aoti", "onnx", "onnx-int8", "torchscript")
_NII = re.compile(r"^(?P<stem>.+?)\.nii(\.gz)?$")
_CHANNEL = re.compile(r"_(\d{4})$")
_LABEL_NAME = re.compile(r"_segmentation$", re.IGNORECASE)

ProbsFn = Callable[[np.ndarray], np.ndarray]  # (D, S, S) float32 -> (D, K, S, S) float32


class PredictError(DataError):
    """A model or export cannot be used for prediction; the one-line message starts with the
    file (a :class:`DataError`, so the CLIs print it as one line with exit status 2)."""


@dataclass
class Predictor:
    """A plan and the function that turns a prepared volume into class probabilities."""

    plan: Plan
    probs: ProbsFn
    source: str


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of ``(N, K, H, W)`` logits, float32."""
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def batched(fn: Callable[[np.ndarray], np.ndarray], batch_size: int = 16) -> ProbsFn:
    """``(D, S, S)`` -> softmax of ``fn`` (``(N, 1, S, S)`` -> logits) over batches of slices."""
    def probs(image: np.ndarray) -> np.ndarray:
        out = [softmax(fn(np.ascontiguousarray(image[a:a + batch_size, None], np.float32)))
               for a in range(0, image.shape[0], batch_size)]
        return np.concatenate(out, axis=0)

    return probs


# ----------------------------------------------------------------------------- plans
def plan_from_json(text: str | bytes | dict, source: Path | str) -> Plan:
    """Validate a stored plan (JSON text or dict); a bad one is a one-line error naming
    ``source``."""
    try:
        return Plan.model_validate(text if isinstance(text, dict) else json.loads(text))
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise PredictError(f"{source}: invalid preprocessing plan ({first})") from None


def teacher_plan(folder: Path) -> Plan:
    """The plan in ``teacher.json``; teachers trained before plans existed get the legacy
    default (fit into the trained size, modality from the card) with a warning."""
    card_path = TeacherCard.path_of(folder)
    if not card_path.is_file():
        raise PredictError(f"{card_path}: not found (is {folder} a `site-node train` folder?)")
    try:
        return TeacherCard.read(card_path).plan_or_default()
    except TeacherCardError as exc:
        raise PredictError(str(exc)) from None


def card_plan(export: Path) -> Plan | None:
    """The plan in ``model_card.json`` beside an exported file (None when absent)."""
    card = export.parent / "model_card.json"
    if not card.is_file():
        return None
    plan = json.loads(card.read_text()).get("plan")
    return plan_from_json(plan, card) if plan else None


# ----------------------------------------------------------------------------- loaders
def load_teacher(folder: Path | str, device: str = "auto", batch_size: int = 16) -> Predictor:
    """A teacher run folder (``best.pt``, ``teacher.json``) as a predictor."""
    from common.inference.evaluate import predict_probs
    from common.models.checkpoint import load_model
    from common.training import select_device

    folder = Path(folder)
    dev = select_device(device)
    model, _ = load_model(folder / "best.pt", dev)
    plan = teacher_plan(folder)
    return Predictor(plan, lambda img: predict_probs(model, img, dev, batch_size),
                     f"teacher {folder / 'best.pt'}")


def runtime_of(path: Path) -> str:
    """The runtime an exported file belongs to, from its name."""
    name = path.name
    if name.endswith(".int8.onnx"):
        return "onnx-int8"
    if name.endswith(".aoti.pt2"):
        return "aoti"
    by_suffix = {".onnx": "onnx", ".pt2": "pt2", ".pt": "eager", ".ts": "torchscript"}
    if path.suffix not in by_suffix:
        raise PredictError(f"{path}: expected a .pt2, .onnx, .int8.onnx, .pt or .ts file or an "
                           "export folder")
    return by_suffix[path.suffix]


def export_files(path: Path) -> dict[str, Path]:
    """Runtime -> file of an export: a folder (the :data:`common.inference.runtimes.FILES`
    names, and a legacy ``student.ts``) or one file (itself, plus the student files beside it)."""
    from common.inference.runtimes import FILES

    folder = path if path.is_dir() else path.parent
    names = {**FILES, "torchscript": "student.ts"}
    found = {r: folder / n for r, n in names.items() if (folder / n).is_file()}
    if path.is_file():
        found[runtime_of(path)] = path
    return found


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` can be imported."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def card_of(path: Path) -> dict[str, Any]:
    """``model_card.json`` beside (or in) an export, ``{}`` when absent or unreadable."""
    card = (path if path.is_dir() else path.parent) / "model_card.json"
    try:
        return dict(json.loads(card.read_text())) if card.is_file() else {}
    except (ValueError, OSError):
        return {}


def _cpu_capability() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def pick_runtime(path: Path, files: dict[str, Path]) -> str:
    """``auto``: a named file's own runtime; for a folder the fastest usable runtime the model
    card measured (agreement with fp32 >= 99.5 %), else onnx > pt2 > eager > torchscript.
    ONNX runtimes are skipped when onnxruntime is not installed, an AOTInductor package when
    this CPU lacks the instructions it was compiled for (it falls back, never fails)."""
    from common.inference.runtimes import aoti_runs_here, aoti_target, fastest

    usable = [r for r in files if onnxruntime_available() or not r.startswith("onnx")]
    if "aoti" in usable and not aoti_runs_here(aoti_target(files["aoti"])):
        log.info("%s: skipping the AOTInductor package (compiled for %s; this CPU: %s)",
                 path, aoti_target(files["aoti"]), _cpu_capability())
        usable.remove("aoti")
    if path.is_file() and runtime_of(path) in usable:
        return runtime_of(path)
    rows = card_of(path).get("runtimes", {})
    latency = {r: float(v["latency"]["median_ms"]) for r, v in rows.items() if "latency" in v}
    agree = {r: float(v.get("agreement", 1.0)) for r, v in rows.items()}
    best = fastest(latency, [r for r in usable if r != "torchscript"], agree)
    if best is None and "torchscript" in usable:
        return "torchscript"
    if best is None:
        raise PredictError(f"{path}: no usable exported student (files: {sorted(files)})")
    return best


def load_export(path: Path | str, runtime: str = "auto", batch_size: int = 16) -> Predictor:
    """An exported student as a predictor. ``runtime``: ``auto`` (:func:`pick_runtime`), or
    one of ``eager``, ``pt2``, ``onnx``, ``onnx-int8`` (the file is looked for in the export
    folder / beside the named file), or ``torchscript`` (exports made before torch.export).
    """
    path = Path(path)
    if runtime not in RUNTIMES:
        raise PredictError(f"unknown runtime {runtime!r}; choose one of {RUNTIMES}")
    if not path.exists():
        raise PredictError(f"{path}: export not found")
    files = export_files(path)
    if runtime == "auto":
        runtime = pick_runtime(path, files)
    if runtime not in files:
        raise PredictError(f"{path}: no {runtime} file to predict with "
                           f"(present: {', '.join(sorted(files)) or 'none'})")
    loaders = {"onnx": _onnx_predictor, "onnx-int8": _onnx_predictor, "pt2": _pt2_predictor,
               "eager": _eager_predictor, "torchscript": _torchscript_predictor,
               "aoti": _aoti_predictor}
    warn_agreement(path, runtime)
    return loaders[runtime](files[runtime], batch_size)


def warn_agreement(path: Path, runtime: str) -> None:
    """Warn when the model card measured ``runtime`` below the fp32 agreement gate
    (:data:`common.inference.runtimes.MIN_AGREEMENT`): ``auto`` never picks it, a forced one
    says so."""
    from common.inference.runtimes import MIN_AGREEMENT

    row = card_of(path).get("runtimes", {}).get(runtime, {})
    agree = row.get("agreement") if isinstance(row, dict) else None
    if isinstance(agree, int | float) and agree < MIN_AGREEMENT:
        log.warning("%s: runtime %s agreed with fp32 on only %.1f %% of pixels (gate %.1f %%) "
                    "in the model card: its masks may differ; prefer --runtime auto",
                    path, runtime, 100 * agree, 100 * MIN_AGREEMENT)


def _need_plan(plan: Plan | None, path: Path, where: str) -> Plan:
    if plan is None:
        raise PredictError(f"{path}: no preprocessing plan in the {where} or the "
                           "model_card.json beside it; re-export with `coordinator export`")
    return plan


def _onnx_predictor(path: Path, batch_size: int) -> Predictor:
    try:
        from common.inference.runtimes import ort_runner, ort_session

        sess = ort_session(path)
    except ImportError:
        raise PredictError(f"{path}: ONNX inference needs onnxruntime "
                           "(pip install 'fedmtkd[export]'), or pass the .pt2 file") from None
    meta = sess.get_modelmeta().custom_metadata_map
    plan = plan_from_json(meta[PLAN_KEY], path) if PLAN_KEY in meta else card_plan(path)
    label = "onnxruntime int8" if runtime_of(path) == "onnx-int8" else "onnxruntime"
    return Predictor(_need_plan(plan, path, "ONNX metadata"),
                     batched(ort_runner(sess), batch_size), f"{label} {path}")


def _pt2_predictor(path: Path, batch_size: int) -> Predictor:
    from common.inference.runtimes import load_pt2, torch_runner

    extra = {PLAN_EXTRA_FILE: ""}
    try:
        module = load_pt2(path, extra)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise PredictError(f"{path}: not a torch.export file ({str(exc).splitlines()[0]})"
                           ) from None
    text = extra[PLAN_EXTRA_FILE]
    plan = plan_from_json(text, path) if text else card_plan(path)
    return Predictor(_need_plan(plan, path, ".pt2 extra files"),
                     batched(torch_runner(module), batch_size), f"pt2 {path}")


def _aoti_predictor(path: Path, batch_size: int) -> Predictor:
    """An AOTInductor package (``student.aoti.pt2``); its plan is in the model card beside it."""
    from common.inference.runtimes import load_runner

    try:
        run = load_runner("aoti", path)
    except (RuntimeError, ValueError, OSError) as exc:
        raise PredictError(f"{path}: not a usable AOTInductor package "
                           f"({str(exc).splitlines()[0]})") from None
    plan = _need_plan(card_plan(path), path, "AOTInductor package (none stored)")
    return Predictor(plan, batched(run, batch_size), f"aoti {path}")


def _eager_predictor(path: Path, batch_size: int) -> Predictor:
    import torch

    from common.inference.runtimes import fold_conv_bn, torch_runner
    from common.models.checkpoint import CheckpointError, load_model

    try:
        model, ckpt = load_model(path)
    except CheckpointError as exc:
        raise PredictError(str(exc)) from None
    fold_conv_bn(model, torch.zeros(1, 1, 64, 64))
    plan = plan_from_json(ckpt["plan"], path) if ckpt.get("plan") else card_plan(path)
    return Predictor(_need_plan(plan, path, "checkpoint"),
                     batched(torch_runner(model), batch_size), f"eager {path}")


def _torchscript_predictor(path: Path, batch_size: int) -> Predictor:
    import torch

    extra = {PLAN_EXTRA_FILE: ""}
    try:
        module: Any = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise PredictError(f"{path}: not a TorchScript file ({str(exc).splitlines()[0]})"
                           ) from None
    text = extra[PLAN_EXTRA_FILE]
    plan = plan_from_json(text, path) if text else card_plan(path)
    if plan is None:
        raise PredictError(f"{path}: no preprocessing plan in the TorchScript extra files or "
                           "the model_card.json beside it; re-export with `coordinator export`")
    module.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.asarray(module(torch.from_numpy(x)).float().numpy())

    return Predictor(plan, batched(run, batch_size), f"torchscript {path}")


# ----------------------------------------------------------------------------- the loop
def case_name(path: Path) -> str:
    """Case id of an image file: the name without ``.nii[.gz]`` and the nnU-Net ``_0000``."""
    m = _NII.match(path.name)
    stem = m.group("stem") if m else path.stem
    return _CHANNEL.sub("", stem)


def list_images(folder: Path) -> list[Path]:
    """NIfTI images directly in ``folder`` (sorted): label files (``*_segmentation``) and
    nnU-Net channels other than ``_0000`` are skipped."""
    if not folder.is_dir():
        raise data_error(folder, "input folder not found")
    out = []
    for p in sorted(folder.iterdir()):
        m = _NII.match(utf8_name(p).name)
        if not p.is_file() or m is None or _LABEL_NAME.search(m.group("stem")):
            continue
        channel = _CHANNEL.search(m.group("stem"))
        if channel is None or channel.group(1) == "0000":
            out.append(p)
    if not out:
        from common.data.dicom import has_dicom

        hint = ("; it holds DICOM: `predict` reads a DICOM folder directly (--format dicom-seg "
                "writes DICOM-SEG), or convert it with `site-node import-dicom`"
                if has_dicom(folder) else "")
        raise data_error(folder, f"no NIfTI images (*.nii, *.nii.gz) in this folder{hint}")
    return out


def predict_file(pred: Predictor, image: Path, out: Path, overlays: Path | None = None) -> Path:
    """Segment one image over its whole field of view (sliding windows of the plan's canvas);
    write ``out`` (uint8, the image's affine and header); ``overlays``: a radiological PNG on
    the scan's own grid."""
    from common.data.native import save_native_mask
    from common.data.nifti import read_nifti

    f = read_nifti(image, first_channel=True)
    warn_modality(pred.plan, f)
    case, mask = predict_case(pred, f)
    path = save_native_mask(mask, case, out)
    if overlays is not None:
        save_prediction_overlay(f, mask, overlays, case_name(image))
    return path


def predict_case(pred: Predictor, f: Any) -> tuple[Any, np.ndarray]:
    """``(PreparedCase, (X, Y, Z) uint8 mask in the file's own orientation)`` of a read
    :class:`~common.data.nifti.NiftiFile` (whole field of view)."""
    from common.data.native import prepare_loaded, to_native
    from common.data.window import window_probs

    case = prepare_loaded(f, pred.plan)
    probs = window_probs(pred.probs, case.whole_image, pred.plan.size)
    return case, to_native(probs, case)


def warn_modality(plan: Plan, f: Any) -> None:
    """Warn when an image's intensities do not look like the plan's modality: a CT plan fed
    an image with no value below -100 (MR), or an MRI plan fed one spanning -1000 .. +1000 HU
    (air and bone: CT). A heuristic: the header does not say."""
    lo, hi = float(np.percentile(f.data, 0.5)), float(np.percentile(f.data, 99.5))
    looks_ct = lo <= -500 and hi >= 300
    if plan.norm == "ct" and lo > -100:
        log.warning("%s: the model was trained on CT but this image has no value below -100 "
                    "(HU air is -1000): is it MR? Predictions may be meaningless", f.path)
    elif plan.norm == "mri" and looks_ct:
        log.warning("%s: the model was trained on MRI but this image spans %.0f .. %.0f, like "
                    "CT in HU: predictions may be meaningless", f.path, lo, hi)


def save_prediction_overlay(f: Any, mask: np.ndarray, folder: Path, name: str) -> Path:
    """Radiological overlay (prediction in red, legend) of the slice with the largest predicted
    area, on the scan's own grid (:func:`common.inference.evaluate.save_radiological_overlay`)."""
    from common.data.nifti import to_canonical_zyx
    from common.inference.evaluate import save_radiological_overlay

    image, spacing = f.canonical_zyx()
    pred = to_canonical_zyx(mask, f.ornt)
    z = int(pred.reshape(pred.shape[0], -1).sum(1).argmax())
    return save_radiological_overlay(image, pred, spacing, folder / f"overlay_{name}_z{z:03d}.png",
                                     f"{name} (prediction)")


def predict_folder(pred: Predictor, in_dir: Path | str, out_dir: Path | str,
                   overlays: bool = False) -> list[Path]:
    """Segment every image of ``in_dir`` into ``out_dir/<case>.nii.gz`` (overlays in
    ``out_dir/overlays/``); returns the written mask paths. DICOM input and DICOM-SEG output:
    :mod:`common.inference.dicom_seg`."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    images = list_images(in_dir)
    log.info("predicting %d images from %s with %s", len(images), in_dir, pred.source)
    written = []
    for image in images:
        out = out_dir / f"{case_name(image)}.nii.gz"
        written.append(predict_file(pred, image, out, out_dir / "overlays" if overlays else None))
        log.info("%s -> %s", image.name, out)
    return written
