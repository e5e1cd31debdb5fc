"""``site-node`` command line: what hospital IT runs.

Start this site's SuperNode: ``site-node --data DIR --coordinator HOST:PORT --name SITE``
(same as ``site-node run ...``; see :mod:`site_node.run`). Subcommands: ``status`` (what this
node has done), ``make-phantom`` (synthetic data), ``check`` (data fingerprint),
``train`` (local teacher), ``keys init|show`` (this site's key pairs, made here),
``teacher list|use`` (which teacher version serves), ``audit`` (verify
the signed exchange log), ``policy show`` (the egress allowlist), ``predict`` / ``evaluate``
(segment a folder of NIfTI with the teacher; score predictions, :mod:`common.predict_cli`).
Errors in the input
data are printed as one line naming the file, with exit status 2. ``-v``/``-q`` (before or
after the subcommand) set the log level; logs go to stderr, results to stdout.

Adding a subcommand: write ``_add_<name>(sub)`` (``sub.add_parser`` + ``set_defaults(func=...)``,
the handler takes the parsed args and returns the exit code) and call it in
:func:`build_parser`; it gets ``-v``/``-q`` and the error guard automatically.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from site_node.train_config import TeacherTrainConfig

Handler = Callable[[argparse.Namespace], int]
log = logging.getLogger(__name__)


def _cmd_make_phantom(args: argparse.Namespace) -> int:
    from common.config import validated_copy
    from common.data.phantom import PhantomSpec, make_phantom

    shape = (args.depth, args.size, args.size)
    spec = validated_copy(PhantomSpec(), {"preset": args.preset, "site_style": args.site_style,
                                          "n_cases": args.cases, "seed": args.seed,
                                          "shape": shape}, "make-phantom")
    out = make_phantom(args.out, spec.preset, spec.site_style, spec.n_cases, spec.seed,
                       spec.shape)
    log.info("wrote %d %s phantom cases (style %s) to %s", args.cases, args.preset,
             args.site_style, out)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from common.config import load_config
    from site_node.train import run_training
    from site_node.train_config import TeacherTrainConfig, paper_preset

    if args.config is not None:
        cfg = load_config(args.config, TeacherTrainConfig)
    elif args.paper:
        cfg = paper_preset(args.model or "deeplabv3plus_r50")
    else:
        cfg = TeacherTrainConfig()
    overrides = {k: getattr(args, k)
                 for k in ("model", "epochs", "size", "batch_size", "device", "label")}
    cfg = _validated(cfg, {k: v for k, v in overrides.items() if v is not None})
    run_training(args.data, cfg, args.out, resume=args.resume)
    return 0


def _validated(cfg: TeacherTrainConfig, overrides: dict[str, object]) -> TeacherTrainConfig:
    """``cfg`` with the command-line ``overrides``, validated (``--model`` against the model
    registry: a typo is one line listing the valid names)."""
    from pydantic import ValidationError

    from common.config import ConfigError

    try:
        return type(cfg).model_validate({**cfg.model_dump(), **overrides})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"--{err['loc'][0]}: {err['msg']}") from None


def _cmd_check(args: argparse.Namespace) -> int:
    """Fingerprint the data folder as training would read it; write it (it stays local)."""
    from common.data.errors import data_error, refuse_inside
    from common.data.fingerprint import compute_fingerprint, format_fingerprint, save_fingerprint
    from common.data.layout import discover_dataset
    from common.data.split import MIN_SPLIT_CASES

    refuse_inside(args.out, args.data)
    fp = compute_fingerprint(discover_dataset(args.data), label=args.label)
    print(format_fingerprint(fp))
    print(f"wrote {save_fingerprint(fp, args.out)} (aggregate only; stays on this site)")
    if fp.n_cases < MIN_SPLIT_CASES:
        raise data_error(args.data, f"only {fp.n_cases} case(s): `site-node train` needs at "
                         f"least {MIN_SPLIT_CASES} (or small_site = \"train_on_all\")")
    return 0


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="verify the data folder and write its fingerprint.json")
    p.add_argument("--data", type=Path, required=True, help="MSD/nnU-Net or multi-site folder")
    p.add_argument("--out", type=Path, default=Path("fingerprint.json"))
    p.add_argument("--label", help="target label: name, value, '1,2' or 'all' "
                                   "(default: the single declared foreground label)")
    p.set_defaults(func=_cmd_check)


def _cmd_policy_show(args: argparse.Namespace) -> int:
    from common.config import load_config
    from site_node.policy import EgressPolicy, default_policy, format_policy

    policy = load_config(args.policy, EgressPolicy) if args.policy else default_policy()
    print(format_policy(policy))
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    """``site-node audit``: the allowed array names come from the site's egress policy."""
    from common.audit_cli import run_audit
    from common.audit_report import site_report
    from common.config import load_config
    from site_node.policy import EgressPolicy, allowed_arrays, default_policy

    policy = load_config(args.policy, EgressPolicy) if args.policy else default_policy()
    return run_audit(args, lambda path: site_report(path, allowed_arrays(policy)))


def _add_audit_and_policy(sub: argparse._SubParsersAction) -> None:
    from common.audit_cli import add_audit_args

    p = sub.add_parser("audit", help="verify this site's signed exchange log and summarise it")
    add_audit_args(p)
    p.add_argument("--policy", type=Path,
                   help="egress policy whose array names are allowed (default: built-in policy)")
    p.set_defaults(func=_cmd_audit)
    p = sub.add_parser("policy", help="inspect the egress policy")
    p.add_argument("action", choices=["show"])
    p.add_argument("--policy", type=Path, help="policy TOML/YAML (default: built-in policy)")
    p.set_defaults(func=_cmd_policy_show)


def _add_make_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-phantom", help="write a synthetic multi-site phantom dataset")
    p.add_argument("--site-style", choices=["A", "B", "C"], required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", choices=["prostate", "spleen"], default="prostate")
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--depth", type=int, default=24, help="slices per volume")
    p.add_argument("--size", type=int, default=96, help="in-plane matrix size")
    p.set_defaults(func=_cmd_make_phantom)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the local teacher on this site's private data")
    p.add_argument("--data", type=Path, required=True, help="MSD/nnU-Net or multi-site folder")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, metrics)")
    p.add_argument("--model", help="teacher architecture (see `coordinator models`)")
    p.add_argument("--config", type=Path, help="TOML/YAML TeacherTrainConfig")
    p.add_argument("--paper", action="store_true", help="paper preset: 384x384, 100 epochs")
    p.add_argument("--epochs", type=int)
    p.add_argument("--size", type=int, help="network input side (default: from the data plan)")
    p.add_argument("--label", help="target label: name, value, '1,2' or 'all'")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.set_defaults(func=_cmd_train)


def _add_run_and_status(sub: argparse._SubParsersAction) -> None:
    from site_node.run import add_run_args, main_run
    from site_node.status import add_status_args, main_status

    p = sub.add_parser("run", help="validate the data, then start this site's SuperNode "
                                   "(the default when --data is given without a subcommand)")
    add_run_args(p)
    p.set_defaults(func=main_run)
    p = sub.add_parser("status", help="what this node has done: data, teacher, runs, audit log")
    add_status_args(p)
    p.set_defaults(func=main_status)


def _add_teacher(sub: argparse._SubParsersAction) -> None:
    from site_node.teacher_versions import add_teacher_args, main_teacher

    p = sub.add_parser("teacher", help="list this site's teacher versions or choose the one "
                                       "that serves (a remote retrain never switches it)")
    add_teacher_args(p)
    p.set_defaults(func=main_teacher)


def _add_keys(sub: argparse._SubParsersAction) -> None:
    from site_node.keys import add_keys_args, main_keys

    p = sub.add_parser("keys", help="generate (init) or print (show) this site's node-auth and "
                                    "audit key pairs; only the .pub files leave the site")
    add_keys_args(p)
    p.set_defaults(func=main_keys)


def build_parser() -> argparse.ArgumentParser:
    """The full ``site-node`` argument parser."""
    from common.logs import add_verbosity_everywhere
    from common.predict_cli import add_predict_commands
    from site_node.teacher_versions import serving_dir

    parser = argparse.ArgumentParser(prog="site-node", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_and_status(sub)
    _add_make_phantom(sub)
    _add_train(sub)
    _add_teacher(sub)
    _add_keys(sub)
    _add_check(sub)
    _add_audit_and_policy(sub)
    add_predict_commands(sub, "site", serving_dir)  # predict, evaluate (the serving teacher)
    add_verbosity_everywhere(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; known input errors become one clear line and exit code 2."""
    from common.cli_errors import run_guarded
    from common.logs import setup_logging, verbosity

    parser = build_parser()
    args = parser.parse_args(with_default_command(parser, argv))
    setup_logging(verbosity(args))
    return run_guarded(lambda: args.func(args), "site-node")


def with_default_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None
                         ) -> list[str]:
    """``site-node --data ...`` (no subcommand) means ``site-node run --data ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    first = args[0] if args else ""
    has_data = any(a == "--data" or a.startswith("--data=") for a in args)
    return ["run", *args] if first not in sub.choices and has_data else args


if __name__ == "__main__":
    sys.exit(main())
