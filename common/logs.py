"""Logging set-up shared by both CLIs and both Flower apps (stdlib :mod:`logging` only).

Every module logs through ``log = logging.getLogger(__name__)``. :func:`setup_logging` gives the
project's package loggers (:data:`LOGGERS`) one timestamped handler on ``sys.stderr`` and a
level from the CLI's ``-q``/``-v`` count; Flower's own ``flwr`` logger and the root logger are
left alone (records still propagate to the root, so pytest's ``caplog`` sees them). ``print``
is kept only for a command's result (tables, verdicts, the command a ``--dry-run`` shows).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TextIO

PACKAGES = ("common", "site_node", "coordinator")
LOGGERS = (*PACKAGES, "__main__")  # a module run with ``python -m`` logs as ``__main__``
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%dT%H:%M:%S"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that looks ``sys.stderr`` up at every record (so redirections, such
    as the Flower runtime's output relay or pytest's ``capsys``, are honoured)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it
        pass


def level_for(verbosity: int) -> int:
    """``verbosity`` = (number of ``-v``) - (number of ``-q``): <0 WARNING, 0 INFO, >0 DEBUG."""
    if verbosity < 0:
        return logging.WARNING
    return logging.DEBUG if verbosity > 0 else logging.INFO


def setup_logging(verbosity: int = 0) -> None:
    """Configure the package loggers (idempotent: a second call replaces the first handler)."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level_for(verbosity))


def ensure_logging() -> None:
    """:func:`setup_logging` at INFO unless a CLI already configured it (Flower apps call this)."""
    if not any(isinstance(h, _StderrHandler) for h in logging.getLogger(PACKAGES[0]).handlers):
        setup_logging(0)


def add_verbosity_args(parser: argparse.ArgumentParser, subcommand: bool = False) -> None:
    """``-v/--verbose`` and ``-q/--quiet`` (repeatable; read back by :func:`verbosity`).

    On a ``subcommand`` parser the defaults are suppressed, so ``prog -v sub`` and
    ``prog sub -v`` both work (a subparser's default would overwrite the main parser's count).
    """
    default = argparse.SUPPRESS if subcommand else 0
    g = parser.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="count", default=default,
                   help="more log output (-v: debug)")
    g.add_argument("-q", "--quiet", action="count", default=default,
                   help="less log output (-q: warnings and errors only)")


def add_verbosity_everywhere(parser: argparse.ArgumentParser) -> None:
    """:func:`add_verbosity_args` on ``parser`` and on every subcommand it has (call it last in
    ``build_parser``, so subcommands added by any module get the flags too)."""
    add_verbosity_args(parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                add_verbosity_args(sub, subcommand=True)


def verbosity(args: argparse.Namespace) -> int:
    """The ``-v`` count minus the ``-q`` count of parsed ``args`` (0 when the flags are absent)."""
    return int(getattr(args, "verbose", 0) or 0) - int(getattr(args, "quiet", 0) or 0)
