"""``site-node`` command line: what hospital IT runs.

Start this site's SuperNode: ``site-node --data DIR --coordinator HOST:PORT --name SITE``
(same as ``site-node run ...``; see :mod:`site_node.run`). Subcommands: ``status`` (what this
node has done), ``make-phantom`` (synthetic data), ``train`` (local teacher), ``audit`` (verify
the signed exchange log), ``policy show`` (the egress allowlist). Errors in the input
data are printed as one line naming the file, with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


def _cmd_make_phantom(args: argparse.Namespace) -> int:
    from common.data.phantom import make_phantom

    shape = (args.depth, args.size, args.size)
    out = make_phantom(args.out, args.preset, args.site_style, args.cases, args.seed, shape)
    print(f"wrote {args.cases} {args.preset} phantom cases (style {args.site_style}) to {out}")
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
    overrides = {k: getattr(args, k) for k in ("model", "epochs", "size", "batch_size", "device")}
    cfg = cfg.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    run_training(args.data, cfg, args.out, resume=args.resume)
    return 0


def _cmd_policy_show(args: argparse.Namespace) -> int:
    from common.config import load_config
    from site_node.policy import EgressPolicy, default_policy, format_policy

    policy = load_config(args.policy, EgressPolicy) if args.policy else default_policy()
    print(format_policy(policy))
    return 0


def _add_audit_and_policy(sub: argparse._SubParsersAction) -> None:
    from common.audit_cli import add_audit_args, run_audit

    p = sub.add_parser("audit", help="verify this site's signed exchange log and summarise it")
    add_audit_args(p)
    p.set_defaults(func=run_audit)
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
    p.add_argument("--size", type=int)
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


def build_parser() -> argparse.ArgumentParser:
    """The full ``site-node`` argument parser."""
    parser = argparse.ArgumentParser(prog="site-node", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_and_status(sub)
    _add_make_phantom(sub)
    _add_train(sub)
    _add_audit_and_policy(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; known input errors become one clear line and exit code 2."""
    from common.cli_errors import run_guarded

    parser = build_parser()
    args = parser.parse_args(with_default_command(parser, argv))
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
