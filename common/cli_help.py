"""``--help`` for users: every parser shows its flags' defaults and each subcommand's summary.

Both command lines build their top-level parser with :class:`CliParser`; argparse gives every
subparser the same class, so each one prints ``(default: X)`` after a flag's help (skipped for
flags whose default is None or False, which mean "not given") and uses the subcommand's one-line
``help=`` as its description when it has none of its own.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends ``(default: X)`` to flags that have one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default is None or default is False
                or default == argparse.SUPPRESS or not action.option_strings):
            return text
        if isinstance(default, (list, tuple)) and not default:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class _SubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """A subcommand's ``help=`` is also its ``--help`` description unless one is given."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        text = kwargs.get("help")
        if "description" not in kwargs and text:
            text = text[0].upper() + text[1:]
            kwargs["description"] = textwrap.fill(text if text.endswith(".") else text + ".", 90)
        return super().add_parser(name, **kwargs)  # type: ignore[no-any-return]


class CliParser(argparse.ArgumentParser):
    """ArgumentParser with :class:`HelpFormatter`; its subparsers are CliParsers too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubParsers)
