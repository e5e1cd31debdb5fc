"""Membership guard: the site's own slices sent back as "proxy" slices.

Queries are built with the protocol's encoder as the coordinator would and delivered to the
REAL ``site_node.app.app`` (egress mod included): the site's own prepared slices and the same
slices lightly noised are refused before the teacher runs and the refusal is in the signed
log; honest proxy slices are answered.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.protocol import QueryConfig, decode_teacher_reply, encode_query, slice_hash
from site_node.membership import (
    FILE,
    Fingerprints,
    area_matrix,
    build_fingerprints,
    lowres,
    private_slices,
    screen,
)
from site_node.policy import MembershipPolicy, default_policy

N, S = 8, 32  # the tiny teachers are trained at 32 px


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the Flower runtime sets before it builds any Message in a ClientApp process."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_node_id", 7), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


@pytest.fixture
def site(tiny_sites: dict, tiny_teachers: dict, tmp_path: Path) -> dict[str, str]:
    """Node config of site_a with a private copy of its teacher (the fixture is shared)."""
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teachers["site_a"], teacher)
    (teacher / FILE).unlink(missing_ok=True)  # earlier tests may fingerprint the shared one
    return {"data-path": str(tiny_sites["site_a"]), "teacher-dir": str(teacher),
            "site-name": "site_a", "state-dir": str(tmp_path / "state")}


def _own(site: dict[str, str]) -> np.ndarray:
    """N of the site's own prepared slices with structure, ``(N, 1, S, S)``."""
    slices = private_slices(Path(site["data-path"]), Path(site["teacher-dir"]))
    busy = np.flatnonzero(np.abs(lowres(slices, 16)).sum(axis=1) > 0)
    return slices[busy[:: max(1, len(busy) // N)][:N], None]


def _ask(site: dict[str, str], images: np.ndarray, policy_path: Path | None = None) -> object:
    """Deliver a query for ``images (N,1,S,S)`` to the real ClientApp; the reply content."""
    from flwr.app import Context, Message, RecordDict

    from site_node.app import app

    cfg = QueryConfig(run_id="m", chunk=0, n_chunks=1, size=S,
                      slice_hashes=[slice_hash(im) for im in images])
    msg = Message(encode_query(images, np.zeros((len(images), S, S), np.uint8), cfg),
                  dst_node_id=7, message_type="query.teacher_outputs")
    node_config = {**site, **({"policy-path": str(policy_path)} if policy_path else {})}
    ctx = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                  run_config={})
    return app(msg, ctx).content


def _decisions(site: dict[str, str]) -> list[tuple[str, str]]:
    path = Path(site["state-dir"]) / "audit" / "egress.jsonl"
    entries = [json.loads(x) for x in path.read_text().splitlines()]
    return [(e["decision"], e.get("reason") or "") for e in entries]


def test_low_resolution_correlation_by_hand() -> None:
    np.testing.assert_allclose(area_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    x = np.array([[[1, 1, 3, 3], [1, 1, 3, 3], [5, 5, 7, 7], [5, 5, 7, 7]]], np.float32)
    # 2x2 means [[1, 3], [5, 7]] -> centred [-3, -1, 1, 3] / sqrt(20)
    np.testing.assert_allclose(lowres(x, 2), [[-3, -1, 1, 3] / np.sqrt(20)], rtol=1e-6)
    np.testing.assert_allclose(lowres(2.5 * x - 4, 2), lowres(x, 2), rtol=1e-5)  # affine
    assert not lowres(np.full((1, 4, 4), 3.0, np.float32), 2).any()  # flat: never matches
    fp = build_fingerprints(x, "t", 2)
    assert screen(x[:, None], fp, 0.98) is not None and "exact hash" in str(screen(x, fp, 0.98))
    rng = np.random.default_rng(0)
    x16, other = rng.random((2, 1, 20, 20), dtype=np.float32)  # central 80 %: 16 px
    fp = build_fingerprints(x16, "t", 8)
    flipped = x16[:, :, ::-1].copy()  # a mirror image is one of the 8 orientations tried
    assert "correlation 1.000" in str(screen(flipped[:, None], fp, 0.99))
    assert screen(other[:, None], fp, 0.9) is None  # another (random) slice


def test_own_and_noised_slices_are_refused_and_logged(task_identity: None,
                                                      site: dict[str, str]) -> None:
    from site_node.egress import EgressRefused

    own = _own(site)
    with pytest.raises(EgressRefused, match=f"membership guard: {N} of {N} .*exact hash"):
        _ask(site, own)
    noise = np.random.default_rng(0).normal(0.0, 0.05 * own.std(), own.shape)
    with pytest.raises(EgressRefused, match=r"match this site's own private slices "
                                            r"\(correlation (0\.9[6-9]\d|1\.000) >= 0\.96"):
        _ask(site, (own + noise).astype(np.float32))
    decisions = _decisions(site)
    assert [d for d, _ in decisions] == ["received", "refused"] * 2
    assert "exact hash" in decisions[1][1] and "correlation" in decisions[3][1]
    assert (Path(site["teacher-dir"]) / FILE).is_file()  # made once, kept next to the teacher


def test_honest_proxy_slices_are_answered(task_identity: None, site: dict[str, str],
                                          tiny_sites: dict) -> None:
    from coordinator.distill.proxy import load_proxy

    proxy = load_proxy(tiny_sites["proxy"], S)
    images = proxy.images[:N]
    name, targets = decode_teacher_reply(_ask(site, images), N, S, "node 7", chunk=0)
    assert name == "site_a" and targets.logits.shape == (1, N, 2, S, S)
    assert [d for d, _ in _decisions(site)] == ["received", "sent"]


def test_the_threshold_and_switch_are_the_sites(task_identity: None, site: dict[str, str],
                                                tmp_path: Path) -> None:
    own = _own(site)
    teacher = Path(site["teacher-dir"])
    assert not (teacher / FILE).exists()
    off = default_policy().model_copy(update={"membership": MembershipPolicy(enabled=False)})
    (tmp_path / "off.yaml").write_text(off.model_dump_json())
    decode_teacher_reply(_ask(site, own, tmp_path / "off.yaml"), N, S, "node 7", chunk=0)
    assert not (teacher / FILE).exists()  # guard off: nothing computed
    noisy = (own + np.random.default_rng(1).normal(0, 0.3 * own.std(), own.shape))
    lax = default_policy().model_copy(update={"membership": MembershipPolicy(
        max_correlation=1.0)})
    (tmp_path / "lax.yaml").write_text(lax.model_dump_json())
    decode_teacher_reply(_ask(site, noisy.astype(np.float32), tmp_path / "lax.yaml"), N, S,
                         "node 7", chunk=0)  # below a threshold of 1.0: answered
    made = (teacher / FILE).stat().st_mtime_ns
    fp = Fingerprints.load(teacher / FILE)
    assert fp.resolution == 16 and len(fp.hashes) == len(private_slices(
        Path(site["data-path"]), teacher))
    decode_teacher_reply(_ask(site, noisy[::-1].astype(np.float32), tmp_path / "lax.yaml"),
                         N, S, "node 7", chunk=0)  # another request (the same is a replay)
    assert (teacher / FILE).stat().st_mtime_ns == made  # once per teacher, not per query


def test_own_slices_prepared_by_another_pipeline_are_members(site: dict[str, str]) -> None:
    """The raw private cases run through the default plan at 48 px (what a coordinator holding
    a copy of the data would send): other size, spacing and normalisation, still refused."""
    from common.data.layout import discover_dataset
    from common.data.slices import load_volumes
    from site_node.membership import teacher_fingerprints

    data, teacher = Path(site["data-path"]), Path(site["teacher-dir"])
    fp = teacher_fingerprints(data, teacher, 16)
    vols = load_volumes(discover_dataset(data), None, 48)
    copies = np.concatenate([v.image for v in vols])[:, None]
    busy = copies[np.abs(lowres(copies, 16)).sum(axis=1) > 0][:N]
    assert len(busy) == N and busy.shape[-1] == 48
    why = screen(busy, fp, MembershipPolicy().max_correlation)
    assert why is not None and f"{N} of {N} query slices match" in why


def test_a_malformed_query_is_left_to_the_decoder(site: dict[str, str]) -> None:
    from site_node.membership import membership_refusal

    rule = MembershipPolicy()
    for bad in (np.zeros((2, 3, 16, 16), np.float32), np.zeros((2, 16, 16), np.float32),
                np.zeros((2, 1, 4, 4), np.complex64), None):
        assert membership_refusal(site, rule, {} if bad is None else {"images": bad}) is None
    assert not (Path(site["teacher-dir"]) / FILE).exists()  # nothing computed for them
    broken = {**site, "data-path": "/nonexistent"}  # a guard that cannot run fails closed
    why = membership_refusal(broken, rule, {"images": np.zeros((2, 1, 16, 16), np.float32)})
    assert why is not None and why.startswith("membership guard unavailable: ")


@pytest.mark.parametrize("edit", ["hflip", "vflip", "rot90", "rot180", "shift_1px", "crop_90"])
def test_flipped_rotated_shifted_or_cropped_own_slices_are_members(site: dict[str, str],
                                                                    edit: str) -> None:
    """Trivial edits that passed the old guard (correlation 0.35-0.93) are refused now."""
    import torch
    import torch.nn.functional as F

    from site_node.membership import teacher_fingerprints

    own = _own(site)[:, 0]
    c = round(S * 0.9)
    o = (S - c) // 2
    edited = {"hflip": own[:, :, ::-1], "vflip": own[:, ::-1, :],
              "rot90": np.rot90(own, 1, axes=(1, 2)), "rot180": np.rot90(own, 2, axes=(1, 2)),
              "shift_1px": np.roll(own, (1, 1), axis=(1, 2)),
              "crop_90": F.interpolate(torch.from_numpy(own[:, None, o:o + c, o:o + c].copy()),
                                       size=(S, S), mode="bilinear")[:, 0].numpy()}[edit]
    fp = teacher_fingerprints(Path(site["data-path"]), Path(site["teacher-dir"]), 16)
    why = screen(np.ascontiguousarray(edited, np.float32)[:, None], fp,
                 MembershipPolicy().max_correlation)
    assert why is not None and f"{N} of {N} query slices match" in why
