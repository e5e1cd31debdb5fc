"""``predict`` and ``evaluate`` subcommands shared by ``site-node`` and ``coordinator``.

``site-node predict --model TEACHER_DIR --in DIR --out DIR [--overlays] [--format dicom-seg]``
segments NIfTI or DICOM (:mod:`common.inference.dicom_seg`) with a
teacher run folder; ``coordinator predict --model EXPORT ...`` with an exported student (the
fastest runtime its model card measured; ``--runtime eager|pt2|onnx|onnx-int8`` forces one).
``... evaluate --pred DIR --labels DIR [--out DIR] [--label NAME|VALUE]`` scores predictions on
the native grid (:mod:`common.inference.evaluate_folder`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def _cmd_predict_teacher(args: argparse.Namespace) -> int:
    from common.data.errors import refuse_inside
    from common.inference.dicom_seg import predict_any
    from common.inference.predict import load_teacher

    refuse_inside(args.out, args.inp)  # masks never go into the image folder
    model = args.resolve_model(args.model) if args.resolve_model else args.model
    if model != args.model:
        log.info("teacher %s serves version %s", args.model, model)
    pred = load_teacher(model, device=args.device)
    written = predict_any(pred, args.inp, args.out, overlays=args.overlays, fmt=args.format)
    print(f"wrote {len(written)} masks to {args.out}")
    return 0


def _cmd_predict_export(args: argparse.Namespace) -> int:
    from common.data.errors import refuse_inside
    from common.inference.dicom_seg import predict_any
    from common.inference.predict import load_export

    refuse_inside(args.out, args.inp)
    pred = load_export(args.model, runtime=args.runtime)
    written = predict_any(pred, args.inp, args.out, overlays=args.overlays, fmt=args.format)
    print(f"wrote {len(written)} masks to {args.out} ({pred.source})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from common.data.errors import refuse_inside
    from common.inference.evaluate_folder import (
        evaluate_folder,
        evaluation_markdown,
        write_evaluation,
    )

    out = args.out or args.pred
    refuse_inside(out, args.labels)  # the label folder is data: never written to
    scores = evaluate_folder(args.pred, args.labels, args.label)
    write_evaluation(scores, out, {"pred": str(args.pred), "labels": str(args.labels),
                                   "label": args.label})
    print(evaluation_markdown(scores), end="")
    log.info("wrote %s", ", ".join(str(out / f"evaluation.{e}") for e in ("csv", "json", "md")))
    return 0


def add_predict_commands(sub: argparse._SubParsersAction, role: str,
                         resolve_model: Callable[[Path], Path] | None = None) -> None:
    """Add ``predict`` and ``evaluate`` to a CLI; ``role`` is ``"site"`` (``--model`` is a
    teacher run folder, mapped by ``resolve_model`` to the version that serves) or
    ``"coordinator"`` (an exported student)."""
    if role not in ("site", "coordinator"):
        raise ValueError(f"unknown role {role!r}")
    site = role == "site"
    p = sub.add_parser("predict", help="segment a folder of NIfTI images into NIfTI masks on "
                                       "each image's own grid")
    p.add_argument("--model", type=Path, required=True,
                   help="teacher run folder (best.pt + teacher.json)" if site else
                   "exported student: the export folder, or student.pt2 / student.onnx / "
                   "student.int8.onnx / student.pt")
    p.add_argument("--in", dest="inp", metavar="DIR", type=Path, required=True,
                   help="folder of NIfTI images, or of DICOM series")
    p.add_argument("--out", type=Path, required=True, help="folder for <case>.nii.gz masks")
    p.add_argument("--overlays", action="store_true",
                   help="also write PNG overlays (radiological, on each scan's own grid)")
    p.add_argument("--format", default="nifti", choices=["nifti", "dicom-seg"],
                   help="nifti: <case>.nii.gz masks; dicom-seg: one DICOM-SEG per series "
                        "referencing it (--in must then be a DICOM folder)")
    if site:
        p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    else:
        p.add_argument("--runtime", default="auto",
                       choices=["auto", "eager", "pt2", "aoti", "onnx", "onnx-int8", "torchscript"],
                       help="auto: the fastest runtime the model card measured (agreeing with "
                            "fp32 on >= 99.5%% of pixels); torchscript: exports made before "
                            "torch.export")
    p.set_defaults(func=_cmd_predict_teacher if site else _cmd_predict_export,
                   resolve_model=resolve_model)
    p = sub.add_parser("evaluate", help="per-case and summary Dice, VOE, HD95 (mm) of a "
                                        "folder of predictions against labels")
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted masks")
    p.add_argument("--labels", type=Path, required=True, help="folder of label files")
    p.add_argument("--out", type=Path, help="where evaluation.{csv,json,md} go (default --pred)")
    p.add_argument("--label", help="target label NAME|VALUE[,...] or all, as in training")
    p.set_defaults(func=_cmd_evaluate)
