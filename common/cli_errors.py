"""One line, never a traceback: how both command lines end on errors and Ctrl-C.

Exit codes (both ``site-node`` and ``coordinator``):

====  ==========================================================================================
0     success
1     the command ran and found a problem it reports (e.g. an audit that fails), or an
      unexpected internal error: one line ``prog: error: internal error: <Type>: <message>``
      (``-v`` prints the traceback as well)
2     bad input: unknown command or flag, a file or value that cannot be used (one line naming
      it; also an OS error on a given path: missing, not a folder, permission denied), a
      memory guard refusal
130   interrupted (Ctrl-C): ``prog: interrupted``
====  ==========================================================================================
"""

from __future__ import annotations

import difflib
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
GLOBAL_FLAGS = ("-v", "--verbose", "-q", "--quiet")


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is already a clear one-liner naming the file or site."""
    from common.audit.keys import AuditError
    from common.config import ConfigError
    from common.data.errors import DataError
    from common.models.checkpoint import CheckpointError
    from common.protocol import ProtocolError
    from common.registry import RegistryError

    return (AuditError, ConfigError, DataError, CheckpointError, RegistryError, ProtocolError)


def _one_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def run_guarded(fn: Callable[[], int], prog: str,
                extra: tuple[type[BaseException], ...] = (), verbose: bool = False) -> int:
    """Run ``fn``; known errors (and ``extra`` types) print ``prog: error: message`` and return
    2, Ctrl-C prints ``prog: interrupted`` and returns 130, any other exception prints one
    line (and its traceback only when ``verbose``) and returns 1."""
    try:
        return fn()
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `prog ... | head`: the reader left
        return 0
    except (*user_error_types(), *extra) as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a path given on the command line: missing, not a folder, denied
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}{exc.strerror or _one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError:
        print(f"{prog}: error: out of memory", file=sys.stderr)
        return 1
    except Exception as exc:  # the last resort: one line, the traceback only on request
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: internal error: {type(exc).__name__}: {_one_line(exc)[:300]} "
              "(run with -v for the traceback)", file=sys.stderr)
        return 1


def guard_interrupt(fn: Callable[[], int], prog: str) -> int:
    """Run ``fn`` (argument parsing included): Ctrl-C anywhere is one line and exit 130."""
    try:
        return fn()
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


class UnknownCommand(ValueError):
    """The first word is not a subcommand; the message lists them with a "did you mean"."""


def unknown_command(word: str, valid: Iterable[str]) -> str:
    """``unknown command 'trian' (did you mean 'train'?); valid: run, status, ...``."""
    names = list(valid)
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown command {word[:60]!r}{hint}; valid: {', '.join(names)}"


def _is_global(arg: str) -> bool:
    return arg in GLOBAL_FLAGS or (len(arg) > 2 and arg[0] == "-" and arg[1] in "vq"
                                   and set(arg[1:]) == {arg[1]})


def split_global_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(leading global flags, the rest)``: ``-v``/``-q`` (also ``-vv``) before the command."""
    rest = list(argv)
    flags: list[str] = []
    while rest and _is_global(rest[0]):
        flags.append(rest.pop(0))
    return flags, rest


def route_command(argv: Sequence[str], commands: Sequence[str],
                  default: Callable[[list[str]], bool] | None = None,
                  default_command: str = "") -> list[str]:
    """``argv`` with the subcommand checked: leading global flags are kept in front; an unknown
    first word raises :class:`UnknownCommand`; with no command word and ``default(rest)`` true,
    ``default_command`` is inserted after the global flags (``site-node --data ...`` is
    ``site-node run --data ...``)."""
    flags, rest = split_global_flags(argv)
    if not rest:
        return list(argv)
    first = rest[0]
    if first in commands or first in ("-h", "--help"):
        return list(argv)
    if not first.startswith("-"):
        raise UnknownCommand(unknown_command(first, commands))
    if default is not None and default(rest):
        return [*flags, default_command, *rest]
    return list(argv)
