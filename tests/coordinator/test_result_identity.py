"""a student run is reused only for the same teachers, proxy, config, code.

On the old tree (HEAD) ``train_student`` returned any ``result.json`` in the run folder: after a
2-teacher run, the 3-teacher rerun under the same name reported the 2-teacher student.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.distill.config import (
    ExperimentConfig,
    RunsConfig,
    SiteSpec,
    StudentTrainConfig,
    WeightingSpec,
)

NAMES = ["site_a", "site_b", "site_c"]


def _data(proxy_dir: Path, n_teachers: int, teacher_ids: list[str] | None = None) -> Any:
    """The proxy set plus ``n_teachers`` synthetic teachers (teacher j: logits scaled by j+1)."""
    from common.kd.targets import TeacherTargets
    from coordinator.distill.proxy import load_proxy
    from coordinator.distill.student import DistillData

    proxy = load_proxy(proxy_dir, 32)
    fg = torch.from_numpy(proxy.masks).float()
    img = torch.from_numpy(proxy.images[:, 0])
    good = torch.stack([1 - fg, fg], 1) * 4.0 - 2.0
    j, n = n_teachers, len(proxy)
    t = TeacherTargets(logits=torch.stack([good * (k + 1) for k in range(j)]),
                       at_early=torch.stack([img[:, ::2, ::2]] * j).contiguous(),
                       at_deep=torch.stack([img[:, ::8, ::8]] * j).contiguous(),
                       rc_early=torch.zeros(j, n), rc_deep=torch.zeros(j, n))
    return DistillData(proxy, t, NAMES[:j], {}, teacher_ids)


def _cfg(proxy_dir: Path, n_sites: int, epochs: int = 1, **kd: float) -> ExperimentConfig:
    s = StudentTrainConfig(model="enet", size=32, epochs=epochs, batch_size=32, device="cpu",
                           step_size_up=20, max_lr=0.005)
    sites = [SiteSpec(name=n, data=proxy_dir, teacher_dir=proxy_dir) for n in NAMES[:n_sites]]
    cfg = ExperimentConfig(name="tiny", out=proxy_dir, proxy=proxy_dir, sites=sites, student=s,
                           runs=RunsConfig(baseline=False, single_teacher=False, weightings=[]))
    return cfg.model_copy(update={"kd": cfg.kd.model_copy(update=kd)})


def _multi(n: int) -> Any:
    from coordinator.distill.student import StudentRun

    return StudentRun("multi_equal", list(range(n)), WeightingSpec(name="equal"))


def _no_training(*_a: object, **_k: object) -> None:
    raise AssertionError("the run was trained again although its fingerprint is unchanged")


def test_three_teachers_do_not_reuse_the_two_teacher_student(
        tiny_sites: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from coordinator.distill import student

    proxy, out = tiny_sites["proxy"], tmp_path / "runs" / "multi_equal"
    two = student.train_student(_multi(2), _data(proxy, 2), _cfg(proxy, 2), out)
    assert two["teachers"] == ["site_a", "site_b"]
    w_cols = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "w1" in w_cols and "w2" not in w_cols
    with monkeypatch.context() as m:  # same fingerprint: result.json reused, nothing trained
        m.setattr(student, "_fit", _no_training)
        again = student.train_student(_multi(2), _data(proxy, 2), _cfg(proxy, 2), out)
    assert again["teachers"] == two["teachers"] and again["identity"] == two["identity"]

    three = student.train_student(_multi(3), _data(proxy, 3), _cfg(proxy, 3), out)
    assert three["teachers"] == ["site_a", "site_b", "site_c"]
    assert three["identity"] != two["identity"]
    assert "w2" in (out / "metrics.csv").read_text().splitlines()[0].split(",")
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["0"]  # retrained from scratch, not resumed
    assert json.loads((out / "result.json").read_text())["teachers"] == three["teachers"]
    ident = json.loads((out / "identity.json").read_text())
    assert [t["name"] for t in ident["fingerprint"]["teachers"]] == three["teachers"]
    assert "fingerprint changed in run" not in caplog.text
    assert "retraining from scratch, the folder's result is stale: fingerprint changed in " \
           "teachers" in caplog.text


@pytest.mark.parametrize("change", ["teacher_digest", "teacher_outputs", "kd", "proxy",
                                    "proxy_masks", "seed", "code"])
def test_every_part_of_the_fingerprint_counts(tiny_sites: dict, tmp_path: Path, change: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from coordinator.distill import identity

    proxy = tiny_sites["proxy"]
    data, cfg, run = _data(proxy, 2, ["best.pt:aa", "best.pt:bb"]), _cfg(proxy, 2), _multi(2)
    base = identity.digest_of(identity.run_fingerprint(run, data, cfg))
    if change == "teacher_digest":  # site_b retrained its teacher: same names, new best.pt
        data.teacher_ids = ["best.pt:aa", "best.pt:cc"]
    elif change == "teacher_outputs":  # federated: no checkpoint digests, the logits count
        data.teacher_ids = None
        base = identity.digest_of(identity.run_fingerprint(run, data, cfg))
        data.targets.logits[1, 0, 0, 0, 0] += 1.0
    elif change == "kd":
        cfg = _cfg(proxy, 2, beta=0.5)
    elif change == "proxy":
        data.proxy.hashes[0] = "0" * 64
    elif change == "proxy_masks":
        data.proxy.masks[0, 0, 0] ^= 1
    elif change == "seed":
        cfg = cfg.model_copy(update={"seed": 1})
    else:
        monkeypatch.setattr(identity, "code_version", lambda: "9.9.9")
    assert identity.digest_of(identity.run_fingerprint(run, data, cfg)) != base


def test_device_and_epochs_are_not_identity(tiny_sites: dict) -> None:
    from coordinator.distill import identity

    proxy = tiny_sites["proxy"]
    data, cfg = _data(proxy, 2), _cfg(proxy, 2)
    fp = identity.run_fingerprint(_multi(2), data, cfg)
    other = cfg.model_copy(update={"student": cfg.student.model_copy(
        update={"device": "auto", "epochs": 7, "teacher_batch_size": 3})})
    assert identity.run_fingerprint(_multi(2), data, other) == fp


def test_unknown_or_shorter_runs_are_wiped_more_epochs_resume(tmp_path: Path) -> None:
    from coordinator.distill.identity import claim_run_folder

    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.pt", "result.json", "metrics.csv"):
        (out / name).write_text("old")
    (out / "notes.txt").write_text("mine")
    claim_run_folder(out, {"a": 1}, epochs=2)  # no identity.json: unknown, wiped
    assert sorted(p.name for p in out.iterdir()) == ["identity.json", "notes.txt"]
    for name in ("last.pt", "result.json"):
        (out / name).write_text("2 epochs")
    claim_run_folder(out, {"a": 1}, epochs=3)  # more epochs: continue from last.pt
    assert (out / "last.pt").exists() and not (out / "result.json").exists()
    claim_run_folder(out, {"a": 1}, epochs=1)  # fewer epochs than trained: retrain
    assert not (out / "last.pt").exists()
    assert json.loads((out / "identity.json").read_text())["epochs"] == 1


def test_teacher_cache_key_follows_the_teacher(tmp_path: Path) -> None:
    from coordinator.distill.identity import cache_key, teacher_digest

    teacher = tmp_path / "t"
    teacher.mkdir()
    assert teacher_digest(teacher) == "missing"
    (teacher / "teacher.json").write_text("{}")
    card = teacher_digest(teacher)
    assert card == ("teacher.json:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
    (teacher / "best.pt").write_bytes(b"v1")
    v1 = teacher_digest(teacher)
    (teacher / "best.pt").write_bytes(b"v2")
    v2 = teacher_digest(teacher)
    assert v1.startswith("best.pt:") and v1 != v2
    assert cache_key("p", v1, "zagoruyko", 2) != cache_key("p", v2, "zagoruyko", 2)
    assert cache_key("p", v1, "zagoruyko", 2) != cache_key("p", v1, "paper", 2)


def test_receipt_key_lookup_refuses_a_path_as_site_name(tmp_path: Path) -> None:
    """A reply's ``site_name`` names ``<keys>/<site>.pub``: ``../../x`` must not reach a path."""
    from coordinator.audit_trail import CoordinatorTrail

    keys = tmp_path / "keys"
    keys.mkdir()
    trail = CoordinatorTrail(tmp_path / "exp", "1", keys)
    why = trail._problem("../../x", {"entry_hash": "h"}, {}, {})
    assert why is not None and why.startswith("site name '../../x' is not a safe name")
    assert trail._problem("site_a", {"entry_hash": "h"}, {}, {}) == (
        f"no public key {keys / 'site_a.pub'} for site 'site_a'")


def test_federated_cache_key_changes_with_the_reported_teacher_and_at_settings() -> None:
    """A federated rerun reuses cached answers only for the same proxy set, attention settings
    and reported teacher (the weights never reach the coordinator, so its validation Dice
    stands in for a digest)."""
    from types import SimpleNamespace

    from coordinator.distill.config import ExperimentConfig
    from coordinator.fed_query import fed_cache_key

    site = {"name": "site_a", "data": "d", "teacher_dir": "t"}
    cfg = ExperimentConfig.model_validate({"name": "t", "out": "o", "proxy": "p",
                                           "sites": [site]})
    proxy = SimpleNamespace(digest="abc")
    key = fed_cache_key(proxy, cfg, 0.9)  # type: ignore[arg-type]
    assert key == fed_cache_key(proxy, cfg, 0.9)  # type: ignore[arg-type]
    assert key != fed_cache_key(proxy, cfg, 0.8)  # type: ignore[arg-type]
    assert key != fed_cache_key(SimpleNamespace(digest="abd"), cfg, 0.9)  # type: ignore[arg-type]
    paper = cfg.model_copy(update={"kd": cfg.kd.model_copy(update={"at_form": "paper"})})
    assert key != fed_cache_key(proxy, paper, 0.9)  # type: ignore[arg-type]
