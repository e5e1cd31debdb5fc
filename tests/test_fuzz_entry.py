"""Fuzz suite, entry points: generated argv and config files for both command lines, and
generated wire messages (any message type, any records) delivered to the real ClientApp.

Every case must end in a result or one line: a command returns 0, 1 or 2 (or argparse exits
2) with no traceback and no ``internal error``; the ClientApp answers, or raises
:class:`~site_node.egress.EgressRefused` or one of the project's one-line error types after a
signed log entry of the refusal. Nothing may change under the site's data and teacher folders.
Each call runs under the 10 s alarm of :func:`tests.test_fuzz.attempt` (a hang fails).

Examples per target: the defaults below times ``$FEDMTKD_FUZZ_SCALE`` (default 1; e.g. 40 for
the >= 10,000-case run recorded in docs/BENCHMARKS.md). Counts are added to
``$FEDMTKD_FUZZ_COUNTS`` (JSON) when set.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.cli_errors import user_error_types
from tests.test_fuzz import COUNTS, EDITS, POLICY_TOML, _mutate, attempt, fuzz, records

SCALE = float(os.environ.get("FEDMTKD_FUZZ_SCALE", "1"))


def scaled(n: int) -> int:
    """``n`` examples times ``$FEDMTKD_FUZZ_SCALE``."""
    return max(1, int(n * SCALE))


class Crash(Exception):
    """A command ended with a traceback or an internal error."""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A tiny phantom site, a (fake) teacher folder and a scratch folder; asserts at the end
    that nothing under the data and teacher folders changed."""
    from common.data.phantom import make_phantom
    from site_node.membership import Fingerprints, card_digest

    root = tmp_path_factory.mktemp("fuzz_site")
    data = make_phantom(root / "data", "prostate", "A", 4, seed=3, shape=(6, 24, 24))
    teacher = root / "teacher"
    teacher.mkdir()
    (teacher / "best.pt").write_bytes(b"not a checkpoint")
    (teacher / "teacher.json").write_text(json.dumps({"val_dice": 0.5}))
    (teacher / "split.json").write_text(json.dumps({"train": ["a"], "val": [], "test": []}))
    Fingerprints(card_digest(teacher), 16, frozenset(), np.zeros((0, 1024), np.float32)).save(
        teacher / "membership.npz")
    garbage = root / "garbage.toml"
    garbage.write_bytes(b"\x00[[[ not toml")
    folders = {"data": data, "teacher": teacher, "scratch": root / "scratch",
               "garbage": garbage, "root": root}
    before = _tree(data) | _tree(teacher)
    yield folders
    assert _tree(data) | _tree(teacher) == before, "files changed under the data/teacher"
    out = os.environ.get("FEDMTKD_FUZZ_COUNTS")
    if out:
        old = json.loads(Path(out).read_text()) if Path(out).is_file() else {}
        old.update({k: dict(v) for k, v in COUNTS.items() if k.startswith("entry:")})
        Path(out).write_text(json.dumps(old, indent=1))


def _tree(folder: Path) -> set[tuple[str, str]]:
    return {(str(p.relative_to(folder)), hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def _no_exec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never start a SuperNode, a training run or timed training steps (``check``: work, not
    a hang); HOME (default state folders) is scratch."""
    import site_node.check
    import site_node.run
    import site_node.train

    monkeypatch.setattr(site_node.run.os, "execve", lambda *a: None)
    monkeypatch.setattr(site_node.train, "run_training", lambda *a, **k: None)
    monkeypatch.setattr(site_node.check, "time_training_steps", lambda *a, **k: (0.1, 1, 1.0))
    monkeypatch.setenv("HOME", str(tmp_path))


def run_cli(main: Any, argv: list[str], target: str = "") -> int:
    """``main(argv)`` with output captured: its exit code (counted under ``target``); a
    traceback or an internal error is a :class:`Crash`."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
            code = exc.code if isinstance(exc.code, int) else 2
    text = err.getvalue()
    if "Traceback" in text or "internal error" in text or code not in (0, 1, 2):
        raise Crash(f"{argv}: exit {code}: {text[-400:]}")
    if target:
        COUNTS[target][f"exit {code}"] += 1
    return int(code)


# ----------------------------------------------------------------------------- argv
SITE_WORDS = ["run", "status", "check", "audit", "policy", "keys", "teacher", "train",
              "make-phantom", "predict", "evaluate", "trian", "polcy", "", "-v", "-q", "-vv"]
COORD_WORDS = ["audit", "export", "predict", "evaluate", "make-proxy", "distill", "simulate",
               "distil", "modles", "", "-v", "-q"]
INPUT_FLAGS = ["--data", "--teacher-dir", "--log", "--pub", "--policy", "--config",
               "--peer-log", "--peer-pub", "--coordinator-key", "--images", "--model", "--head"]
OUTPUT_FLAGS = ["--out", "--dir", "--html", "--state-dir"]
OTHER_FLAGS = ["--coordinator", "--name", "--device", "--size", "--epochs", "--cases",
               "--depth", "--sites", "--compression", "--label", "--last", "--seed",
               "--batch-size", "--site-style", "--preset", "--insecure", "--dry-run", "--json",
               "--no-signatures", "--force", "--paper", "--local", "--resume", "--help"]
VALUES = ["", "0", "-1", "1", "3", "16", "99", "1e9", "cuda:99", "cuda", "cpu", "auto",
          "127.0.0.1:8000", "host", "../../x", "site_a", "A", "prostate", "fp16", "show",
          "init", "list", "pin", "\u00e9\u00e8", "x" * 300]


def _argv(words: list[str]) -> st.SearchStrategy[list[str]]:
    def paths(s: dict[str, Path], which: str) -> st.SearchStrategy[str]:
        picks = ["scratch", "garbage"] if which == "out" else [
            "data", "teacher", "garbage", "scratch"]
        return st.sampled_from([str(s[p]) for p in picks] + ["/nonexistent/x"])

    def build(s: dict[str, Path]) -> st.SearchStrategy[list[str]]:
        token = st.one_of(
            st.tuples(st.sampled_from(INPUT_FLAGS), paths(s, "in")).map(list),
            st.tuples(st.sampled_from(OUTPUT_FLAGS), paths(s, "out")).map(list),
            st.tuples(st.sampled_from(OTHER_FLAGS), st.sampled_from(VALUES)).map(list),
            st.sampled_from(OTHER_FLAGS + VALUES).map(lambda t: [t]),
            st.text(max_size=12).map(lambda t: [t]))
        return st.tuples(st.sampled_from(words), st.lists(token, max_size=6)).map(
            lambda t: [w for w in [t[0]] if w] + [x for tok in t[1] for x in tok])
    return st.deferred(lambda: build(SITE_SLOT[0]))  # the module's site, once it exists


SITE_SLOT: list[dict[str, Path]] = []


@pytest.fixture(autouse=True)
def _slot(site: dict[str, Path]) -> None:
    SITE_SLOT[:] = [site]


@fuzz(scaled(120))
@given(argv=_argv(SITE_WORDS))
def test_site_node_argv(argv: list[str]) -> None:
    from site_node.cli import main

    attempt("entry: site-node argv", lambda: run_cli(main, argv, "entry: site-node argv"), ())


@fuzz(scaled(80))
@given(argv=_argv(COORD_WORDS))
def test_coordinator_argv(argv: list[str]) -> None:
    from coordinator.cli import main

    attempt("entry: coordinator argv", lambda: run_cli(main, argv, "entry: coordinator argv"), ())


# ----------------------------------------------------------------------------- config files
@fuzz(scaled(60))
@given(data=st.binary(max_size=200) | EDITS.map(lambda e: _mutate(POLICY_TOML, e)),
       suffix=st.sampled_from([".toml", ".yaml"]), cmd=st.integers(0, 2))
def test_config_files_through_the_site_cli(site: dict[str, Path], tmp_path: Path, data: bytes,
                                           suffix: str, cmd: int) -> None:
    from site_node.cli import main

    path = tmp_path / f"c{suffix}"
    path.write_bytes(data)
    argv = [["policy", "show", "--policy", str(path)],
            ["train", "--data", str(site["data"]), "--out", str(tmp_path / "t"), "--config",
             str(path)],
            ["status", "--state-dir", str(tmp_path / "s"), "--policy", str(path)]][cmd]
    target = "entry: config files via site-node"
    attempt(target, lambda: run_cli(main, argv, target), ())


# ----------------------------------------------------------------------------- ClientApp
MSG_TYPES = ["train", "evaluate", "query.teacher_outputs", "query.fedavg_train", "query.steal",
             "train.default", "evaluate.x", "query", "bogus", "query.a.b", ""]


def _context(site: dict[str, Path]) -> Any:
    from flwr.app import Context, RecordDict

    node_config = {"data-path": str(site["data"]), "teacher-dir": str(site["teacher"]),
                   "site-name": "site_a", "state-dir": str(site["root"] / "state")}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                   run_config={})


@fuzz(scaled(80))
@given(rd=records(), mtype=st.sampled_from(MSG_TYPES) | st.text(max_size=20))
def test_clientapp_entry(site: dict[str, Path], monkeypatch: pytest.MonkeyPatch, rd: Any,
                         mtype: str) -> None:
    from flwr.app import Message
    from flwr.supercore.task_identity import TaskIdentity

    from site_node.app import app
    from site_node.egress import EgressRefused

    for attr, value in (("_run_id", 1), ("_node_id", 7), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)
    try:
        msg = Message(rd, dst_node_id=7, message_type=mtype)
    except (TypeError, ValueError):
        return  # Flower cannot build it: such a message never reaches a site
    log = site["root"] / "state" / "audit" / "egress.jsonl"
    before = len(log.read_text().splitlines()) if log.is_file() else 0
    attempt("entry: ClientApp", lambda: app(msg, _context(site)),
            (EgressRefused, *user_error_types()))
    entries = [json.loads(x) for x in log.read_text().splitlines()[before:]]
    assert entries and entries[0]["direction"] == "in"  # every request left a trace
    assert entries[-1]["decision"] in ("sent", "refused") and entries[-1]["signature"]
