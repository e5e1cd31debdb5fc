"""Fuzz suite: generated inputs for the protocol decoders, the config loaders, the
NIfTI reader and the audit verifier. Every input must end in a result or in the project's own
one-line error type (ProtocolError, ConfigError, DataError, AuditError): no other exception,
no hang (each call runs under a 10 s alarm). Valid inputs must round-trip unchanged and a
tampered log must never verify ("data lost" otherwise).

Counts per target (tried / refused cleanly / accepted / crashed / data lost) are written as
JSON to ``$FEDMTKD_FUZZ_COUNTS`` when set (see docs/BENCHMARKS.md). The example budgets keep
the module under ~60 s on one CPU thread.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.audit.keys import AuditError, generate_keypair, load_private_key
from common.audit.log import AuditLog, verify_log
from common.config import ConfigError, load_config
from common.data.errors import DataError
from common.data.nifti import read_nifti
from common.protocol import (
    EvalConfig,
    ProtocolError,
    QueryConfig,
    TrainConfig,
    decode_eval,
    decode_eval_reply,
    decode_query,
    decode_teacher_reply,
    decode_train,
    decode_train_reply,
    encode_eval,
    encode_query,
    encode_train,
    slice_hash,
)
from site_node.policy import EgressPolicy
from site_node.train_config import TeacherTrainConfig

ROOT = Path(__file__).resolve().parents[1]
COUNTS: dict[str, Counter[str]] = defaultdict(Counter)
FUZZ = settings(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.filter_too_much])


def fuzz(n: int) -> settings:
    """The suite's settings with ``n`` examples."""
    return settings(FUZZ, max_examples=n)


class Hang(Exception):
    """A call ran past the alarm."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang("no result within 10 s")


def attempt(target: str, fn: Callable[[], Any], errors: tuple[type[BaseException], ...]) -> Any:
    """Run ``fn`` under a 10 s alarm; count it; the project's ``errors`` are clean refusals,
    anything else (or a hang) is a crash and fails the test."""
    COUNTS[target]["tried"] += 1
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(10)
    try:
        out = fn()
    except errors:
        COUNTS[target]["refused cleanly"] += 1
        return None
    except BaseException:
        COUNTS[target]["crashed"] += 1
        raise
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    COUNTS[target]["accepted"] += 1
    return out


def lost(target: str, ok: bool) -> None:
    """Record (and assert) that an accepted valid input came back unchanged."""
    if not ok:
        COUNTS[target]["data lost"] += 1
    assert ok, f"{target}: data lost"


@pytest.fixture(scope="module", autouse=True)
def _write_counts() -> Iterator[None]:
    yield
    out = os.environ.get("FEDMTKD_FUZZ_COUNTS")
    if out:
        Path(out).write_text(json.dumps({k: dict(v) for k, v in COUNTS.items()}, indent=1))


def test_the_harness_counts_a_foreign_exception_as_a_crash() -> None:
    with pytest.raises(ZeroDivisionError):
        attempt("harness", lambda: 1 / 0, (ProtocolError,))
    assert attempt("harness", lambda: decode_train(encode_train(TrainConfig())), ()) is not None
    assert COUNTS.pop("harness") == Counter({"tried": 2, "crashed": 1, "accepted": 1})


# ----------------------------------------------------------------------------- protocol
FIELDS = sorted({*TrainConfig.model_fields, *QueryConfig.model_fields, *EvalConfig.model_fields,
                 "site_name", "val_dice", "case_count", "n", "dice_mean"})
RECORD_KEYS = ["config", "arrays", "student", "site", "metrics", "receipt"]
ARRAY_KEYS = ["images", "masks", "logits", "at_early", "at_deep", "rc_early", "rc_deep", "w"]
INTS = st.integers(-(2**63), 2**63 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
CONFIG_VALUES = st.one_of(INTS, FLOATS, st.booleans(), st.text(max_size=70),
                          st.binary(max_size=16), st.lists(st.text(max_size=70), max_size=4),
                          st.lists(INTS, max_size=4))
METRIC_VALUES = st.one_of(INTS, FLOATS, st.lists(FLOATS, max_size=4))
DTYPES = st.sampled_from(["float32", "float16", "float64", "uint8", "int64", "int16", "bool",
                          "uint16", "complex64"])
ARRAYS = DTYPES.flatmap(lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=4,
                                                                  min_side=0, max_side=4)))


@st.composite
def records(draw: st.DrawFn) -> Any:
    """A random RecordDict: known and unknown record keys, random record types and contents."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    out: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(RECORD_KEYS) | st.text(min_size=1, max_size=8),
                             max_size=4, unique=True)):
        kind = draw(st.sampled_from(["config", "metric", "array"]))
        names = st.sampled_from(FIELDS) | st.text(min_size=1, max_size=10)
        try:
            if kind == "array":
                arrs = draw(st.dictionaries(st.sampled_from(ARRAY_KEYS), ARRAYS, max_size=3))
                out[key] = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                        for k, v in arrs.items()})
            elif kind == "metric":
                out[key] = MetricRecord(draw(st.dictionaries(names, METRIC_VALUES, max_size=6)))
            else:
                out[key] = ConfigRecord(draw(st.dictionaries(names, CONFIG_VALUES, max_size=8)))
        except (TypeError, ValueError):  # flwr refuses to build it: not a sendable message
            assume(False)
    return RecordDict(out)


DECODERS: list[Callable[[Any], Any]] = [
    decode_train, decode_query, decode_eval,
    lambda rd: decode_train_reply(rd, "fuzz"), lambda rd: decode_eval_reply(rd, "fuzz"),
    lambda rd: decode_teacher_reply(rd, 2, 16, "fuzz", chunk=0)]


@fuzz(600)
@given(rd=records(), which=st.integers(0, len(DECODERS) - 1))
def test_protocol_decoders_refuse_random_records(rd: Any, which: int) -> None:
    attempt("protocol decoders", lambda: DECODERS[which](rd), (ProtocolError,))


def _valid_query(n: int) -> Any:
    images = np.random.default_rng(n).random((n, 1, 16, 16), dtype=np.float32)
    cfg = QueryConfig(run_id="r", chunk=0, n_chunks=1, size=16,
                      slice_hashes=[slice_hash(im) for im in images])
    return encode_query(images, np.zeros((n, 16, 16), np.uint8), cfg)


@fuzz(400)
@given(n=st.integers(1, 3), field=st.sampled_from(sorted(QueryConfig.model_fields)),
       value=CONFIG_VALUES, drop=st.booleans())
def test_query_decoder_refuses_mutated_valid_queries(n: int, field: str, value: Any,
                                                     drop: bool) -> None:
    rd = _valid_query(n)
    try:
        if drop:
            del rd["config"][field]
        else:
            rd["config"][field] = value
    except (TypeError, ValueError, KeyError):
        assume(False)
    attempt("protocol decoders", lambda: decode_query(rd), (ProtocolError,))


RUN_IDS = st.from_regex(r"\A[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}\Z") | st.just("")


@fuzz(300)
@given(run_id=RUN_IDS, force=st.booleans(), epochs=st.integers(0, 100_000),
       size=st.just(0) | st.integers(16, 1024), model=st.text(max_size=64))
def test_valid_train_requests_round_trip(run_id: str, force: bool, epochs: int, size: int,
                                         model: str) -> None:
    cfg = TrainConfig(run_id=run_id, force_retrain=force, model=model, epochs=epochs, size=size)
    back = attempt("protocol decoders", lambda: decode_train(encode_train(cfg)), ())
    lost("protocol decoders", back == cfg)


@fuzz(100)
@given(state=st.dictionaries(st.text(min_size=1, max_size=10), ARRAYS, max_size=3))
def test_eval_decoder_takes_or_refuses_any_weights(state: dict[str, np.ndarray]) -> None:
    import torch

    try:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
        rd = encode_eval(EvalConfig(run_id="r", run_name="x", model_name="enet", size=32),
                         tensors)
    except (TypeError, ValueError, RuntimeError):
        assume(False)
    out = attempt("protocol decoders", lambda: decode_eval(rd), (ProtocolError,))
    if out is not None:
        lost("protocol decoders", all(np.array_equal(out[1][k].numpy(), tensors[k].numpy(),
                                                     equal_nan=out[1][k].dtype.is_floating_point)
                                      for k in state))


# ----------------------------------------------------------------------------- config loaders
POLICY_TOML = (ROOT / "deploy" / "egress-policy.toml").read_bytes()
MODELS = [EgressPolicy, TeacherTrainConfig]


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply ``(kind, position, byte)`` edits: 0 overwrite, 1 insert, 2 delete, 3 truncate."""
    buf = bytearray(data)
    for kind, pos, byte in edits:
        i = pos % (len(buf) + 1)
        if kind == 0 and i < len(buf):
            buf[i] = byte
        elif kind == 1:
            buf.insert(i, byte)
        elif kind == 2 and i < len(buf):
            del buf[i]
        elif kind == 3:
            del buf[i:]
    return bytes(buf)


EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 255)),
                 min_size=1, max_size=6)


@fuzz(500)
@given(data=st.binary(max_size=300) | EDITS.map(lambda e: _mutate(POLICY_TOML, e)),
       suffix=st.sampled_from([".toml", ".yaml", ".yml"]), which=st.integers(0, 1))
def test_config_loaders_refuse_random_and_mutated_files(tmp_path: Path, data: bytes,
                                                        suffix: str, which: int) -> None:
    path = tmp_path / f"cfg{suffix}"
    path.write_bytes(data)
    attempt("config loaders", lambda: load_config(path, MODELS[which]), (ConfigError,))


YAML_TREE = st.recursive(st.none() | st.booleans() | INTS | FLOATS | st.text(max_size=20),
                         lambda kids: st.lists(kids, max_size=4)
                         | st.dictionaries(st.sampled_from(sorted(TeacherTrainConfig.model_fields))
                                           | st.text(max_size=8), kids, max_size=5),
                         max_leaves=20)


@fuzz(400)
@given(tree=YAML_TREE, which=st.integers(0, 1))
def test_config_loaders_refuse_random_documents(tmp_path: Path, tree: Any, which: int) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    attempt("config loaders", lambda: load_config(path, MODELS[which]), (ConfigError,))


@fuzz(150)
@given(epochs=st.integers(1, 100_000), batch=st.integers(1, 4096),
       size=st.none() | st.integers(16, 1024), val=st.floats(0.0, 0.45),
       label=st.none() | st.text(max_size=30), suffix=st.sampled_from([".toml", ".yaml"]))
def test_valid_train_configs_round_trip(tmp_path: Path, epochs: int, batch: int,
                                        size: int | None, val: float, label: str | None,
                                        suffix: str) -> None:
    import tomli_w

    cfg = TeacherTrainConfig(epochs=epochs, batch_size=batch, size=size, val_fraction=val,
                             label=label)
    dump = cfg.model_dump(mode="json", exclude_none=True)
    path = tmp_path / f"t{suffix}"
    path.write_text(tomli_w.dumps(dump) if suffix == ".toml" else yaml.safe_dump(dump))
    back = attempt("config loaders", lambda: load_config(path, TeacherTrainConfig), ())
    lost("config loaders", back == cfg)


# ----------------------------------------------------------------------------- NIfTI reader
def _valid_nifti(arr: np.ndarray, gz: bool) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(arr, np.diag([1.0, 1.0, 2.0, 1.0]))
    raw = img.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


VALID_NII = _valid_nifti(np.arange(1, 4 * 5 * 3 + 1, dtype=np.float32).reshape(4, 5, 3), False)
VALID_GZ = gzip.compress(VALID_NII, mtime=0)


@fuzz(700)
@given(data=st.binary(max_size=600)
       | EDITS.map(lambda e: _mutate(VALID_NII, [(k, p % 400, b) for k, p, b in e]))
       | EDITS.map(lambda e: _mutate(VALID_GZ, e))
       | EDITS.map(lambda e: gzip.compress(_mutate(VALID_NII, [(k, p % 400, b)
                                                                for k, p, b in e]), mtime=0)),
       gz=st.booleans())
def test_nifti_reader_refuses_random_and_mutated_files(tmp_path: Path, data: bytes,
                                                       gz: bool) -> None:
    path = tmp_path / ("x.nii.gz" if gz else "x.nii")
    path.write_bytes(data)
    attempt("NIfTI reader", lambda: read_nifti(path, allow_empty=True), (DataError,))


@fuzz(150)
@given(arr=hnp.arrays(st.sampled_from(["float32", "int16", "uint8"]),
                      hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=6),
                      elements={"min_value": 0, "max_value": 100}),
       gz=st.booleans())
def test_valid_nifti_round_trips(tmp_path: Path, arr: np.ndarray, gz: bool) -> None:
    path = tmp_path / ("v.nii.gz" if gz else "v.nii")
    path.write_bytes(_valid_nifti(arr, gz))
    back = attempt("NIfTI reader", lambda: read_nifti(path, allow_empty=True), (DataError,))
    lost("NIfTI reader", back is not None and np.array_equal(back.data, arr.astype(np.float32)))


# ----------------------------------------------------------------------------- audit verifier
@pytest.fixture(scope="module")
def signed_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Any, str]:
    """A valid 4-entry signed log: ``(bytes, public key, head hash)``."""
    d = tmp_path_factory.mktemp("audit")
    key_path, _ = generate_keypair(d, "site")
    key = load_private_key(key_path)
    log = AuditLog(d / "egress.jsonl", key)
    for i, decision in enumerate(["received", "sent", "received", "refused"]):
        entry = log.append(run_id="r", peer="node 1", direction="in" if i % 2 == 0 else "out",
                           msg_type="query.teacher_outputs", decision=decision,  # type: ignore
                           arrays={"logits": np.full((2, 2), i, np.float16)},
                           config={"chunk": i, "reason": "x" * i}, reason=None)
    return (d / "egress.jsonl").read_bytes(), key.public_key(), entry.entry_hash


def _entries(data: bytes) -> list[Any] | None:
    try:
        return [json.loads(line) for line in data.splitlines() if line.strip()]
    except ValueError:
        return None


@fuzz(600)
@given(edits=EDITS, lines=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)),
                                   max_size=2), signed=st.booleans())
def test_audit_verifier_reports_every_tampering(tmp_path: Path, signed_log: tuple[bytes, Any,
                                                                                  str],
                                                edits: list[tuple[int, int, int]],
                                                lines: list[tuple[int, int]],
                                                signed: bool) -> None:
    data, pub, head = signed_log
    rows = data.splitlines(keepends=True)
    for kind, j in lines:  # 0 drop a line, 1 duplicate it, 2 swap it with the next
        i = j % len(rows)
        if kind == 0 and len(rows) > 1:
            rows.pop(i)
        elif kind == 1:
            rows.insert(i, rows[i])
        elif i + 1 < len(rows):
            rows[i], rows[i + 1] = rows[i + 1], rows[i]
    bad = _mutate(b"".join(rows), edits)
    path = tmp_path / "egress.jsonl"
    path.write_bytes(bad)
    report = attempt("audit verifier",
                     lambda: verify_log(path, pub if signed else None, head), (AuditError,))
    if report is not None and not report.ok:  # tampering reported: a clean refusal
        COUNTS["audit verifier"].update({"accepted": -1, "refused cleanly": 1})
    if report is not None and report.ok:
        lost("audit verifier", _entries(bad) == _entries(data) or not signed and
             _unsigned_equivalent(bad, data))


def _unsigned_equivalent(bad: bytes, data: bytes) -> bool:
    """Without a key only the chain is checked: an edit of the signature field alone is not
    data (the entries' content and chain are unchanged)."""
    a, b = _entries(bad), _entries(data)
    strip = [{k: v for k, v in e.items() if k != "signature"} for e in (a or [])]
    return a is not None and b is not None and strip == [
        {k: v for k, v in e.items() if k != "signature"} for e in b]
