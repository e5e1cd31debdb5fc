"""``coordinator`` command line: what researchers run.

Subcommands: ``models`` (Table 2: params and FLOPs), ``make-proxy`` (synthetic public proxy
set), ``distill --local`` (the whole Tables 3-5 experiment on one machine), ``distill``
without ``--local`` (the same against a running SuperLink, see :mod:`coordinator.federated_cli`),
``simulate`` (that run on a local deployment), ``export``, ``audit``, ``predict`` /
``evaluate`` (segment NIfTI with the exported student; score predictions). ``-v``/``-q`` (before or
after the subcommand) set the log level; logs go to stderr, results to stdout.

Adding a subcommand: write ``_add_<name>(sub)`` (``sub.add_parser`` + ``set_defaults(func=...)``,
the handler takes the parsed args and returns the exit code) and call it in
:func:`build_parser`; it gets ``-v``/``-q`` and the error guard automatically.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)
DESCRIPTION = """\
The coordinator's side of a federated distillation: build the public proxy set, ask the sites'
teachers for their outputs on it, train and compare the students, export the chosen one, and
verify the signed exchange logs.

Run "coordinator COMMAND --help" for a command's flags. -v / -q set the log level.
Exit status: 0 success, 1 a problem found (e.g. a failed audit) or an internal error,
2 bad input (one line naming the file or value), 130 interrupted."""


def _cmd_models(args: argparse.Namespace) -> int:
    from common.models.complexity import format_table, model_table

    names = args.names.split(",") if args.names else None
    print(format_table(model_table(names, size=args.size)))
    return 0


def _cmd_make_proxy(args: argparse.Namespace) -> int:
    from common.config import validated_copy
    from common.data.phantom import PhantomSpec, make_proxy

    styles = tuple(s.strip() for s in args.style.split(",") if s.strip())
    spec = validated_copy(PhantomSpec(), {"n_cases": args.cases, "seed": args.seed,
                                          "preset": args.preset,
                                          "shape": (args.depth, args.size, args.size)},
                          "make-proxy")
    for style in styles or ("",):
        validated_copy(spec, {"site_style": style}, "make-proxy --style")
    out = make_proxy(args.out, preset=spec.preset, n_cases=spec.n_cases, seed=spec.seed,
                     shape=spec.shape, styles=styles)
    log.info("wrote proxy phantom set (%d cases, styles %s) to %s", args.cases,
             ",".join(styles), out)
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from common.config import load_config, validated_copy
    from coordinator.distill.config import ExperimentConfig, paper_preset
    from coordinator.distill.experiment import run_experiment
    from coordinator.export import export_best_multi

    cfg = load_config(args.config, ExperimentConfig).resolve_paths(args.config.parent.resolve())
    if args.paper:
        cfg = paper_preset(cfg)
    if args.out is not None:
        cfg = cfg.model_copy(update={"out": args.out.resolve()})
    if args.proxy is not None:
        cfg = cfg.model_copy(update={"proxy": args.proxy.resolve()})
    if args.epochs is not None:
        cfg = cfg.model_copy(update={"student": validated_copy(
            cfg.student, {"epochs": args.epochs}, "--epochs")})
    if args.rows:
        from coordinator.distill.rows import restrict_rows

        cfg = restrict_rows(cfg, [r.strip() for r in args.rows.split(",") if r.strip()])
    if not args.local:
        from common.lock import probe_out_folder
        from coordinator.federated_cli import main_federated

        probe_out_folder(cfg.out)  # the ServerApp, in another process, holds the lock

        if cfg.runs.local_only or cfg.runs.pooled:
            log.warning("local_only and pooled rows need the sites' data: run them with "
                        "--local (the report lists them as not run)")
        return main_federated(args, cfg)
    from coordinator.local_sites import LocalSites

    run_experiment(cfg, LocalSites(cfg), lambda rows: export_best_multi(cfg.out, rows, cfg))
    print(f"results: {cfg.out / 'results.md'}")  # the command's answer: where the table is
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from coordinator.topology.simulate import main_simulate

    _check_sites(args.config, args.sites)
    return main_simulate(args)


def _check_sites(config: Path, n: int) -> None:
    """``--sites N`` within ``1..`` the config's site count (one line otherwise)."""
    from common.config import ConfigError, load_config
    from coordinator.distill.config import ExperimentConfig

    count = len(load_config(config, ExperimentConfig).sites)
    if not 1 <= n <= count:
        raise ConfigError(f"--sites {n}: {config} lists {count} site(s); choose 1..{count}")


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="federated run on 127.0.0.1: the docker-compose "
                                        "topology started through deploy/entrypoints/")
    p.add_argument("--sites", type=int, required=True, help="first N sites of the config")
    p.add_argument("--config", type=Path, required=True, help="TOML/YAML ExperimentConfig")
    p.add_argument("--workdir", type=Path, required=True, help="logs, Flower state, FLWR_HOME")
    p.add_argument("--min-sites", dest="min_sites", type=int, default=0,
                   help="fewest live sites to go on with; 0 = the config's min_sites")
    p.add_argument("--round-timeout", dest="round_timeout", type=float,
                   help="seconds per round (default: the Flower app's pyproject.toml)")
    p.add_argument("--timeout", type=float, default=3600.0, help="whole run, seconds")
    p.add_argument("--no-train", dest="no_train", action="store_true",
                   help="skip the train round (sites are then named node<id>)")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext gRPC without TLS (local simulation only; prints a warning)")
    p.add_argument("--compression", default="fp16",
                   choices=["fp16", "int8_probs", "downsample", "fp32"],
                   help="how every site encodes its query logits (node config `compression`)")
    from coordinator.federated_cli import add_simulate_engine_args

    add_simulate_engine_args(p)
    p.set_defaults(func=_cmd_simulate)


def _add_audit(sub: argparse._SubParsersAction) -> None:
    from common.audit.cli import add_audit_args
    from coordinator.audit_trail import run_coordinator_audit

    p = sub.add_parser("audit", help="verify and summarise an exchange log (<out>/audit/...)")
    add_audit_args(p)
    p.set_defaults(func=run_coordinator_audit)


def build_parser() -> argparse.ArgumentParser:
    """The full ``coordinator`` argument parser."""
    from common.cli_help import CliParser
    from common.inference.cli import add_predict_commands
    from common.logs import add_verbosity_everywhere
    from coordinator.federated_cli import add_export_parser, add_federated_args

    parser = CliParser(prog="coordinator", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="params and FLOPs per model (paper Table 2)")
    p.add_argument("--size", type=int, default=384, help="input side in pixels for the FLOPs")
    p.add_argument("--names", help="comma-separated model names (all when not given)")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("make-proxy", help="write a synthetic proxy set mixing all site styles")
    p.add_argument("--out", type=Path, required=True, help="folder to write the proxy set to")
    p.add_argument("--style", default="A,B,C", help="comma-separated phantom styles the cases "
                   "cycle through (PX / SX: a prostate / spleen proxy unlike every realistic "
                   "site style)")
    p.add_argument("--preset", choices=["prostate", "spleen"], default="prostate",
                   help="organ and modality of the proxy set")
    p.add_argument("--cases", type=int, default=9, help="number of proxy volumes")
    p.add_argument("--seed", type=int, default=1000, help="random seed")
    p.add_argument("--depth", type=int, default=24, help="slices per volume")
    p.add_argument("--size", type=int, default=96, help="in-plane side in pixels")
    p.set_defaults(func=_cmd_make_proxy)
    p = sub.add_parser("distill", help="train students by multi-teacher distillation")
    p.add_argument("--config", type=Path, required=True, help="TOML/YAML ExperimentConfig")
    p.add_argument("--local", action="store_true", help="query teachers in-process")
    p.add_argument("--paper", action="store_true", help="paper sizes (384px, 100 epochs)")
    p.add_argument("--out", type=Path, help="override the config's output folder")
    p.add_argument("--proxy", type=Path, help="override the config's proxy set folder")
    p.add_argument("--epochs", type=int, help="override student epochs")
    p.add_argument("--rows", metavar="ROW[,ROW...]", help="run only these rows of the config "
                   "(student_only, single, a weighting label, local_only, pooled, fedavg, "
                   "fedprox, fedbn; the default row is always kept)")
    add_federated_args(p)
    p.set_defaults(func=_cmd_distill)
    add_export_parser(sub)
    _add_simulate(sub)
    _add_audit(sub)
    add_predict_commands(sub, "coordinator")  # predict, evaluate
    add_verbosity_everywhere(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: bad input (and a memory guard refusal) is one clear line and exit 2,
    Ctrl-C one line and exit 130, an unexpected error one line and exit 1
    (:mod:`common.cli_errors`); never a traceback."""
    from common.cli_errors import guard_interrupt

    return guard_interrupt(lambda: _main(argv), "coordinator")


def _main(argv: Sequence[str] | None) -> int:
    from common.cli_errors import EXIT_BAD_INPUT, UnknownCommand, route_command, run_guarded
    from common.logs import setup_logging, verbosity
    from coordinator.distill.memory import MemoryBudgetError

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    try:
        routed = route_command(list(sys.argv[1:] if argv is None else argv), list(sub.choices))
    except UnknownCommand as exc:
        print(f"coordinator: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args = parser.parse_args(routed)
    setup_logging(verbosity(args))
    return run_guarded(lambda: args.func(args), "coordinator", (MemoryBudgetError,),
                       verbose=verbosity(args) > 0)


if __name__ == "__main__":
    sys.exit(main())
