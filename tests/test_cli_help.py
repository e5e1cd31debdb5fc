"""``--help`` of both command lines is written for users: every flag has a line of help, defaults
are shown, and nothing printed carries developer notes or reStructuredText markup."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.cli_help import CliParser
from coordinator.cli import build_parser as coordinator_parser
from site_node.check import fingerprint_path
from site_node.cli import build_parser as site_parser

MARKUP = re.compile(r"``|:mod:|:func:|:class:|Adding a subcommand|\bissue \d")


Named = tuple[str, argparse.ArgumentParser]


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[Named]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def _all_parsers() -> list[Named]:
    return [*_walk(site_parser(), "site-node"), *_walk(coordinator_parser(), "coordinator")]


@pytest.mark.parametrize(("path", "parser"), _all_parsers(), ids=lambda v: str(v))
def test_every_parser_is_written_for_users(path: str, parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert not MARKUP.search(text), f"{path} --help: {MARKUP.search(text)}"
    missing = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
    assert not missing, f"{path}: flags without help: {missing}"
    assert isinstance(parser, CliParser), path
    if path != "site-node" and path != "coordinator":
        assert parser.description, f"{path} --help has no description"


def test_defaults_are_shown_once_and_none_is_not() -> None:
    parser = CliParser(prog="x")
    parser.add_argument("--size", type=int, default=384, help="side")
    parser.add_argument("--name", help="a name")
    parser.add_argument("--port", type=int, default=7, help="port (default %(default)s)")
    parser.add_argument("--flag", action="store_true", help="a switch")
    text = " ".join(parser.format_help().split())
    assert "side (default: 384)" in text
    assert "a name (default" not in text
    assert text.count("(default") == 2  # size, and port once (its own %(default)s)
    assert "a switch (default" not in text


def test_export_help_names_what_it_writes() -> None:
    parsers = dict(_walk(coordinator_parser(), "coordinator"))
    text = parsers["coordinator export"].format_help()
    assert "TorchScript" not in text
    assert "ONNX" in text and ".pt2" in text


def test_check_out_is_a_folder_and_still_takes_a_json_file(tmp_path: Path) -> None:
    assert fingerprint_path(tmp_path / "check") == tmp_path / "check" / "fingerprint.json"
    assert fingerprint_path(tmp_path / "fp.json") == tmp_path / "fp.json"
    assert fingerprint_path(Path(".")) == Path("fingerprint.json")
