"""``site-node`` command line: what hospital IT runs.

Start this site's SuperNode: ``site-node --data DIR --coordinator HOST:PORT --name SITE``
(same as ``site-node run ...``; see :mod:`site_node.run`). Subcommands: ``status`` (what this
node has done), ``make-phantom`` (synthetic data), ``check`` (data fingerprint),
``train`` (local teacher), ``keys init|show|pin`` (this site's key pairs, made here; pin
the coordinator's audit key),
``teacher list|use`` (which teacher version serves), ``audit`` (verify
the signed exchange log), ``policy show`` (the egress allowlist), ``predict`` / ``evaluate``
(segment a folder of NIfTI with the teacher; score predictions, :mod:`common.inference.cli`).
Errors in the input
data are printed as one line naming the file, with exit status 2; an unknown subcommand is
refused with the valid ones and a "did you mean"; Ctrl-C is one line and exit 130
(:mod:`common.cli_errors`). ``-v``/``-q`` (before or after the subcommand) set the log level;
logs go to stderr, results to stdout.

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
DESCRIPTION = """\
The site's side of a federated distillation: prepare and check this site's data, train the local
teacher, and serve it to the coordinator. Images and labels never leave the site; only the
answers the egress policy allows do.

Start serving: site-node run --data DIR --coordinator HOST:PORT --name SITE
(also: site-node --data DIR --coordinator HOST:PORT --name SITE).
Run "site-node COMMAND --help" for a command's flags. -v / -q set the log level.
Exit status: 0 success, 1 a problem found (e.g. a failed audit) or an internal error,
2 bad input (one line naming the file or value), 130 interrupted."""
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
    from site_node.check import main_check  # fingerprint, plan, memory and time of a run

    return main_check(args)


def _add_check(sub: argparse._SubParsersAction) -> None:
    from site_node.check import add_check_args

    p = sub.add_parser("check", help="verify the data folder, write its fingerprint.json, and "
                                     "print the plan and what a training run will cost")
    add_check_args(p)
    p.set_defaults(func=_cmd_check)


def _cmd_policy_show(args: argparse.Namespace) -> int:
    from common.config import load_config
    from site_node.policy import EgressPolicy, default_policy, format_policy

    policy = load_config(args.policy, EgressPolicy) if args.policy else default_policy()
    print(format_policy(policy))
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    """``site-node audit``: the allowed array names come from the site's egress policy."""
    from common.audit.cli import run_audit
    from common.audit.report import site_report
    from common.config import load_config
    from site_node.budget import budget_lines
    from site_node.policy import EgressPolicy, allowed_arrays, default_policy, release_caps

    policy = load_config(args.policy, EgressPolicy) if args.policy else default_policy()

    def report(path: Path) -> dict:
        summary = site_report(path, allowed_arrays(policy), release_caps(policy))
        state = path.parent.parent  # <state-dir>/audit/egress.jsonl
        if (state / "query_budget.json").is_file():
            summary["budget"] = budget_lines(state, policy)
        return summary

    return run_audit(args, report)


def _add_audit_and_policy(sub: argparse._SubParsersAction) -> None:
    from common.audit.cli import add_audit_args

    p = sub.add_parser("audit", help="verify this site's signed exchange log and summarise it")
    add_audit_args(p)
    p.add_argument("--policy", type=Path,
                   help="egress policy in force at the site: its array names are allowed and "
                        "its weight release (FedAvg runs: STATE_DIR/policy_weight_release.yaml) "
                        "reads as released under policy (default: built-in policy)")
    p.set_defaults(func=_cmd_audit)
    p = sub.add_parser("policy", help="inspect the egress policy")
    p.add_argument("action", choices=["show"])
    p.add_argument("--policy", type=Path, help="policy TOML/YAML (default: built-in policy)")
    p.set_defaults(func=_cmd_policy_show)


def _add_make_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-phantom", help="write a synthetic multi-site phantom dataset")
    p.add_argument("--site-style", required=True,
                   help="scanner style of this site: A, B, C (stress styles; B has inverted "
                   "contrast), prostate P1, P2, P3, PX (proxy), spleen CT S1 (Decathlon-like), "
                   "S2 (Duke-like), SX (proxy); see common/data/phantom.py STYLES")
    p.add_argument("--out", type=Path, required=True, help="data folder to write")
    p.add_argument("--preset", choices=["prostate", "spleen"], default="prostate",
                   help="organ and modality of the phantom")
    p.add_argument("--cases", type=int, default=12, help="number of volumes")
    p.add_argument("--seed", type=int, default=0, help="random seed")
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
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--size", type=int, help="network input side (default: from the data plan)")
    p.add_argument("--label", help="target label: name, value, '1,2' or 'all'")
    p.add_argument("--batch-size", dest="batch_size", type=int,
                   help="override the config's batch size")
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
                                    "audit key pairs (only the .pub files leave the site), or "
                                    "pin the coordinator's audit key (pin)")
    add_keys_args(p)
    p.set_defaults(func=main_keys)


def build_parser() -> argparse.ArgumentParser:
    """The full ``site-node`` argument parser."""
    from common.cli_help import CliParser
    from common.inference.cli import add_predict_commands
    from common.logs import add_verbosity_everywhere
    from site_node.dicom_import import add_import_command
    from site_node.teacher_versions import serving_dir

    parser = CliParser(prog="site-node", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_and_status(sub)
    _add_make_phantom(sub)
    _add_train(sub)
    _add_teacher(sub)
    _add_keys(sub)
    _add_check(sub)
    add_import_command(sub)  # import-dicom (site_node.dicom_import)
    _add_audit_and_policy(sub)
    add_predict_commands(sub, "site", serving_dir)  # predict, evaluate (the serving teacher)
    add_verbosity_everywhere(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: bad input is one clear line and exit 2, Ctrl-C one line and exit 130, an
    unexpected error one line and exit 1 (:mod:`common.cli_errors`); never a traceback."""
    from common.cli_errors import guard_interrupt

    return guard_interrupt(lambda: _main(argv), "site-node")


def _main(argv: Sequence[str] | None) -> int:
    from common.cli_errors import EXIT_BAD_INPUT, UnknownCommand, run_guarded
    from common.logs import setup_logging, verbosity

    parser = build_parser()
    try:
        routed = with_default_command(parser, argv)
    except UnknownCommand as exc:
        print(f"site-node: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args = parser.parse_args(routed)
    setup_logging(verbosity(args))
    return run_guarded(lambda: args.func(args), "site-node", verbose=verbosity(args) > 0)


def with_default_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None
                         ) -> list[str]:
    """``site-node [-v|-q] --data ...`` (no subcommand) means ``site-node run --data ...``;
    an unknown first word (``site-node trian``) raises
    :class:`~common.cli_errors.UnknownCommand` listing the subcommands."""
    from common.cli_errors import route_command

    args = list(sys.argv[1:] if argv is None else argv)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    def has_data(rest: list[str]) -> bool:
        return any(a == "--data" or a.startswith("--data=") for a in rest)

    return route_command(args, list(sub.choices), has_data, "run")


if __name__ == "__main__":
    sys.exit(main())
