"""Signed hash-chained audit log: tampering is located, receipts bind arrays, HTML is escaped."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.audit.entries import (
    NONFINITE_KEY,
    canonical_json,
    digest_arrays,
    entry_hash_of,
    make_receipt,
    verify_receipt,
)
from common.audit.html import render_html
from common.audit.keys import (
    AuditError,
    fingerprint,
    generate_keypair,
    load_private_key,
    load_public_key,
)
from common.audit.log import (
    CLEAN_STATEMENT,
    TEACHER_OUTPUTS,
    AuditLog,
    read_entries,
    summarise_log,
    verify_log,
)

Q = "query.teacher_outputs"


def teacher_arrays(n: int = 2, s: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"logits": rng.normal(size=(n, 2, s, s)).astype(np.float16),
            "at_early": rng.random((n, s // 2, s // 2)).astype(np.float16),
            "at_deep": rng.random((n, s // 8, s // 8)).astype(np.float16),
            "rc_early": rng.random(n).astype(np.float32),
            "rc_deep": rng.random(n).astype(np.float32)}


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_log(path: Path, key: Ed25519PrivateKey | None, extra_out: str | None = None) -> None:
    """Six entries: train in/out, query in/out (sent), query refused, evaluate out."""
    log = AuditLog(path, key)
    log.append(run_id="r1", peer="coord", direction="in", msg_type="train", config={"epochs": 0})
    log.append(run_id="r1", peer="coord", direction="out", msg_type="train",
               config={"val_dice": 0.8, "case_count": 12, "site_name": "site_a"})
    log.append(run_id="r1", peer="coord", direction="in", msg_type=Q,
               arrays={"images": np.zeros((2, 1, 16, 16), np.float32)}, decision="received")
    arrays = teacher_arrays()
    if extra_out:
        arrays[extra_out] = np.ones((24, 16, 16), np.float32)
    log.append(run_id="r1", peer="coord", direction="out", msg_type=Q, arrays=arrays,
               config={"chunk": 0, "n": 2})
    log.append(run_id="r1", peer="coord", direction="out", msg_type=Q, decision="refused",
               reason="query of 2 slices < min_query_batch 8")
    log.append(run_id="r1", peer="coord", direction="out", msg_type="evaluate",
               config={"dice_mean": 0.7})


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def rewrite(path: Path, new: list[str]) -> None:
    path.write_text("".join(new))


def resealed(line: str, **changes: object) -> str:
    """An edited entry with a recomputed entry_hash: what a forger without the key can do."""
    d = json.loads(line)
    d.update(changes)
    d["entry_hash"] = ""
    from common.audit.entries import AuditEntry

    e = AuditEntry.model_validate(d)
    e.entry_hash = entry_hash_of(e)
    return canonical_json(e.model_dump()).decode() + "\n"


@pytest.fixture()
def signed_log(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "audit.jsonl"
    write_log(path, key)
    return path


def test_clean_chain_verifies(signed_log: Path, key: Ed25519PrivateKey) -> None:
    rep = verify_log(signed_log, key.public_key())
    assert rep.ok and rep.n_entries == 6 and rep.signatures_checked
    assert [e.seq for _, e in read_entries(signed_log)] == [1, 2, 3, 4, 5, 6]


def test_edited_field_detected(signed_log: Path, key: Ed25519PrivateKey) -> None:
    ls = lines(signed_log)
    ls[2] = ls[2].replace('"peer":"coord"', '"peer":"evil"')
    rewrite(signed_log, ls)
    rep = verify_log(signed_log, key.public_key())
    assert not rep.ok and rep.first_bad_line == 3
    assert rep.reason == "line 3: entry_hash mismatch (entry edited)"


def test_resealed_edit_caught_by_signature_or_chain(signed_log: Path,
                                                   key: Ed25519PrivateKey) -> None:
    ls = lines(signed_log)
    ls[2] = resealed(ls[2], peer="evil")
    rewrite(signed_log, ls)
    rep = verify_log(signed_log, key.public_key())
    assert rep.first_bad_line == 3 and "bad signature" in str(rep.reason)
    rep = verify_log(signed_log, None)  # without the key the next link breaks
    assert rep.reason == "line 4: prev_hash does not match line 3 (entry removed or reordered)"


def test_deleted_line_detected(signed_log: Path, key: Ed25519PrivateKey) -> None:
    ls = lines(signed_log)
    del ls[2]
    rewrite(signed_log, ls)
    rep = verify_log(signed_log, key.public_key())
    assert rep.first_bad_line == 3
    assert rep.reason == "line 3: prev_hash does not match line 2 (entry removed or reordered)"


def test_swapped_lines_detected(signed_log: Path, key: Ed25519PrivateKey) -> None:
    ls = lines(signed_log)
    ls[3], ls[4] = ls[4], ls[3]
    rewrite(signed_log, ls)
    rep = verify_log(signed_log, key.public_key())
    assert rep.first_bad_line == 4 and "prev_hash does not match line 3" in str(rep.reason)


def test_inserted_forged_line_detected(signed_log: Path, key: Ed25519PrivateKey) -> None:
    ls = lines(signed_log)
    forged = resealed(ls[2], prev_hash=json.loads(ls[1])["entry_hash"], seq=3, signer="",
                      signature="", peer="forger")
    rewrite(signed_log, ls[:2] + [forged] + ls[2:])
    rep = verify_log(signed_log, key.public_key())
    assert rep.first_bad_line == 3 and "is not the expected key" in str(rep.reason)
    rep = verify_log(signed_log, None)  # chain alone: the line after the insert breaks
    assert rep.first_bad_line == 4 and "prev_hash" in str(rep.reason)


def test_flipped_signature_byte_detected(signed_log: Path, key: Ed25519PrivateKey) -> None:
    ls = lines(signed_log)
    sig = json.loads(ls[4])["signature"]
    flipped = format(int(sig[:2], 16) ^ 0x01, "02x") + sig[2:]
    ls[4] = ls[4].replace(sig, flipped)
    rewrite(signed_log, ls)
    rep = verify_log(signed_log, key.public_key())
    assert rep.first_bad_line == 5 and rep.reason is not None
    assert rep.reason.startswith("line 5: bad signature")
    assert verify_log(signed_log, Ed25519PrivateKey.generate().public_key()).first_bad_line == 1


def test_seq_gap_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "unsigned.jsonl"
    write_log(path, None)
    head = verify_log(path).head_hash
    ls = lines(path)
    rewrite(path, ls[:2] + [resealed(ls[2], seq=4)])
    assert verify_log(path).reason == "line 3: seq 4 expected 3"
    rewrite(path, ls[:5])
    assert verify_log(path).ok
    rep = verify_log(path, expected_head=head)
    assert rep.first_bad_line == 6 and "truncated" in str(rep.reason)


def test_resume_continues_chain(signed_log: Path, key: Ed25519PrivateKey) -> None:
    e = AuditLog(signed_log, key).append(run_id="r2", peer="coord", direction="in",
                                         msg_type="train")
    assert e.seq == 7
    rep = verify_log(signed_log, key.public_key())
    assert rep.ok and rep.n_entries == 7 and rep.head_hash == e.entry_hash


def test_torn_final_line_is_moved_aside_into_a_signed_recovery_entry(
        signed_log: Path, key: Ed25519PrivateKey) -> None:
    good = signed_log.read_bytes()
    line7 = canonical_json({"seq": 7, "half": "x" * 40}) + b"\n"
    torn = line7[: len(line7) // 2]  # power loss half way through an append
    with signed_log.open("ab") as fh:
        fh.write(torn)
    log = AuditLog(signed_log, key)  # start-up: detected and moved aside here
    sha = hashlib.sha256(torn).hexdigest()
    side = signed_log.with_name(f"audit.jsonl.torn-{sha[:16]}")
    assert side.read_bytes() == torn  # nothing silently dropped
    assert signed_log.read_bytes().startswith(good)
    e = log.append(run_id="r2", peer="coord", direction="in", msg_type="train")
    assert e.seq == 8  # later appends work
    rep = verify_log(signed_log, key.public_key())
    assert rep.ok and rep.n_entries == 8 and rep.signatures_checked
    rec = [x for _, x in read_entries(signed_log)][6]
    assert (rec.msg_type, rec.direction, rec.decision, rec.signature != "") == (
        "log.recovery", "local", "recovered", True)
    assert rec.config == {"torn_sha256": sha, "torn_bytes": len(torn), "torn_offset": len(good),
                          "side_file": side.name}
    s = summarise_log(signed_log)
    assert s["recoveries"] == [{"line": 7, "time": rec.time, "side_file": side.name,
                                "torn_bytes": len(torn), "torn_sha256": sha}]
    assert "log.recovery" not in s["bytes"] and s["statement"] == CLEAN_STATEMENT
    assert AuditLog(signed_log, key).recover() is None  # a clean tail is left alone


def test_entry_missing_only_its_newline_is_kept(signed_log: Path,
                                                key: Ed25519PrivateKey) -> None:
    signed_log.write_bytes(signed_log.read_bytes()[:-1])  # crash right before the newline
    e = AuditLog(signed_log, key).append(run_id="r2", peer="coord", direction="in",
                                         msg_type="train")
    assert e.seq == 7 and verify_log(signed_log, key.public_key()).ok
    assert not list(signed_log.parent.glob("*.torn-*"))


def test_nonfinite_values_are_logged_as_null_with_a_reason(tmp_path: Path,
                                                           key: Ed25519PrivateKey) -> None:
    path = tmp_path / "a.jsonl"
    e = AuditLog(path, key).append(
        run_id="r1", peer="coord", direction="out", msg_type="evaluate", decision="refused",
        config={"hd95_mean": float("nan"), "hd95_std": np.float32("inf"), "dice_mean": 0.5,
                "n": np.int64(3)},
        reason="evaluate: metric 'hd95_mean': non-finite value")
    assert e.config["hd95_mean"] is None and e.config["hd95_std"] is None
    assert e.config["dice_mean"] == 0.5 and e.config["n"] == 3
    assert e.config[NONFINITE_KEY].startswith("hd95_mean=nan, hd95_std=inf: not finite")
    assert verify_log(path, key.public_key()).ok
    assert json.loads(path.read_text())["config"]["hd95_mean"] is None


@pytest.mark.parametrize(("name", "dtype", "shape"), [
    ("probs_u8", np.uint8, (2, 1, 16, 16)), ("logits_ds", np.float16, (2, 2, 8, 8))])
def test_compression_mode_arrays_are_teacher_outputs(tmp_path: Path, name: str, dtype: type,
                                                     shape: tuple[int, ...]) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path)
    log.append(run_id="r1", peer="coord", direction="in", msg_type=Q, decision="received",
               arrays={"images": np.zeros((2, 1, 16, 16), np.float32)})
    arrays = {k: v for k, v in teacher_arrays().items() if k != "logits"}
    log.append(run_id="r1", peer="coord", direction="out", msg_type=Q,
               arrays={**arrays, name: np.zeros(shape, dtype)})
    s = summarise_log(path)
    assert s["violations"] == [] and s["statement"] == CLEAN_STATEMENT
    assert TEACHER_OUTPUTS[Q] == {"logits", "probs_u8", "logits_ds", "at_early", "at_deep",
                                  "rc_early", "rc_deep"}


def test_summary_statement(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    clean = tmp_path / "clean.jsonl"
    write_log(clean, key)
    s = summarise_log(clean)
    assert s["statement"] == CLEAN_STATEMENT and s["refused"] == 1
    assert s["bytes"][Q]["out"] == sum(a.nbytes for a in teacher_arrays().values())
    assert s["bytes"][Q]["in"] == 2 * 16 * 16 * 4
    bad = tmp_path / "bad.jsonl"
    write_log(bad, key, extra_out="volume")
    s = summarise_log(bad)
    assert s["violations"] == [f"line 4: {Q} reply to coord carried ['volume']"]
    assert s["statement"] != CLEAN_STATEMENT and "volume" in s["statement"]


def test_receipt_roundtrip(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    arrays = teacher_arrays()
    entry = AuditLog(tmp_path / "a.jsonl", key).append(
        run_id="r1", peer="coord", direction="out", msg_type=Q, arrays=arrays,
        config={"chunk": 3, "n": 2})
    receipt = make_receipt(entry)
    assert all(isinstance(v, str) for v in receipt.values())  # fits a ConfigRecord
    received = {k: v.copy() for k, v in arrays.items()}
    assert verify_receipt(receipt, received, key.public_key())
    received["logits"].view(np.uint8)[0] ^= 1
    assert not verify_receipt(receipt, received, key.public_key())
    assert not verify_receipt(receipt, arrays, Ed25519PrivateKey.generate().public_key())
    forged = dict(receipt, header=receipt["header"].replace('"chunk":3', '"chunk":4'))
    assert not verify_receipt(forged, arrays, key.public_key())
    assert digest_arrays(arrays) == entry.arrays


def test_html_escapes(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    AuditLog(path).append(run_id="<script>alert(1)</script>", peer="a&b", direction="in",
                          msg_type="train", reason='"><script>')
    page = render_html(path, verify_log(path), summarise_log(path))
    assert "<script>" not in page and "&lt;script&gt;" in page and "a&amp;b" in page
    assert "VERIFIED" in page


def test_keypair_files(tmp_path: Path) -> None:
    priv, pub = generate_keypair(tmp_path, "site_a")
    assert os.stat(priv).st_mode & 0o777 == 0o600
    k, p = load_private_key(priv), load_public_key(pub)
    assert fingerprint(k.public_key()) == fingerprint(p) and fingerprint(p).startswith("ed25519:")
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path, "site_a")
    os.chmod(priv, 0o644)
    with pytest.raises(AuditError, match="readable"):
        load_private_key(priv)
