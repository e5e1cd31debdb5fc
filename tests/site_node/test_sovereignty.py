"""The site decides about its own teacher: forged ``train`` messages.

A coordinator's ``train`` request is built with the protocol's encoder exactly as the
coordinator would, with overrides (model, epochs, size) and ``force_retrain``, and handed to
the REAL ``site_node.app.app`` (egress mod included). The teacher files must stay
byte-identical; with a policy that allows a retrain, it lands in a new version folder and the
serving teacher changes only when the site switches (``site-node teacher use``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from common.protocol import TrainConfig, decode_train_reply, encode_train
from site_node.membership import FILE
from site_node.policy import EgressPolicy, RemoteTrainPolicy, default_policy
from site_node.teacher_versions import (
    TeacherVersionError,
    remote_overrides,
    serving_dir,
    use_version,
)

FORGED = TrainConfig(run_id="evil", force_retrain=True, model="enet", epochs=500, size=16)


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the Flower runtime sets before it builds any Message in a ClientApp process."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_node_id", 7), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _site(tiny_sites: dict, tiny_teachers: dict, tmp_path: Path,
          policy: EgressPolicy | None = None) -> dict[str, str]:
    """Node config of site_a with a private copy of its teacher (the fixture is shared)."""
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teachers["site_a"], teacher)
    cfg = {"data-path": str(tiny_sites["site_a"]), "teacher-dir": str(teacher),
           "site-name": "site_a", "state-dir": str(tmp_path / "state")}
    if policy is not None:
        (tmp_path / "policy.yaml").write_text(policy.model_dump_json())  # JSON is YAML
        cfg["policy-path"] = str(tmp_path / "policy.yaml")
    return cfg


def _send(node_config: dict[str, str], cfg: TrainConfig) -> tuple[str, float]:
    """Deliver a forged ``train`` message to the real ClientApp; ``(site, val_dice)``."""
    from flwr.app import Context, Message, RecordDict

    from site_node.app import app

    msg = Message(encode_train(cfg), dst_node_id=7, message_type="train")
    ctx = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                  run_config={})
    site, reply = decode_train_reply(app(msg, ctx).content, "node 7")
    return site, reply.val_dice


def test_overrides_are_honoured_only_within_the_policy_bounds() -> None:
    assert remote_overrides(FORGED, RemoteTrainPolicy()) == (
        {}, ["model='enet'", "epochs=500", "size=16"])
    rule = RemoteTrainPolicy(models=["enet"], max_epochs=500, min_size=16, max_size=32)
    assert remote_overrides(FORGED, rule) == ({"model": "enet", "epochs": 500, "size": 16}, [])
    rule = RemoteTrainPolicy(models=["tiny_unet"], max_epochs=499, min_size=32, max_size=64)
    assert remote_overrides(FORGED, rule)[0] == {}
    assert remote_overrides(TrainConfig(), rule) == ({}, [])  # 0 / "" = the site's own value


def test_a_forged_retrain_leaves_the_teacher_byte_identical(
        task_identity: None, tiny_sites: dict, tiny_teachers: dict, tmp_path: Path) -> None:
    node_config = _site(tiny_sites, tiny_teachers, tmp_path)  # default policy: no retrain
    teacher = Path(node_config["teacher-dir"])
    before = _digests(teacher)
    card = json.loads((teacher / "teacher.json").read_text())
    site, val = _send(node_config, FORGED)
    assert site == "site_a" and val == pytest.approx(card["val_dice"])
    after = _digests(teacher)  # no retrain, no version, no pointer; only the site's own
    assert {k: after[k] for k in before} == before  # membership fingerprints may be added
    assert set(after) - set(before) <= {FILE}
    assert not (teacher / "versions").exists() and not (teacher / "current").exists()


def test_an_allowed_retrain_writes_a_new_version_and_the_site_switches(
        task_identity: None, tiny_sites: dict, tiny_teachers: dict, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from site_node.cli import main

    rule = RemoteTrainPolicy(allow_retrain=True, models=["tiny_unet"], max_epochs=2,
                             min_size=32, max_size=48)
    policy = default_policy().model_copy(update={"remote_train": rule})
    node_config = _site(tiny_sites, tiny_teachers, tmp_path, policy)
    teacher = Path(node_config["teacher-dir"])
    before = _digests(teacher)
    asked = TrainConfig(run_id="r", force_retrain=True, model="enet", epochs=2, size=64)
    _send(node_config, asked)
    after = _digests(teacher)
    assert {k: after[k] for k in before} == before  # the serving teacher is untouched
    assert {k for k in set(after) - set(before) if not k.startswith("versions/1/")} <= {FILE}
    assert serving_dir(teacher) == teacher  # the new version does not serve yet
    trained = json.loads((teacher / "versions" / "1" / "train_config.json").read_text())
    assert (trained["model"], trained["epochs"], trained["size"]) == ("tiny_unet", 2, 32)
    assert main(["teacher", "use", "1", "--teacher-dir", str(teacher)]) == 0
    assert serving_dir(teacher) == teacher / "versions" / "1"
    assert (teacher / "current").read_text() == "1\n"
    capsys.readouterr()
    assert main(["teacher", "list", "--teacher-dir", str(teacher)]) == 0
    assert capsys.readouterr().out.split() == ["base", str(teacher), "*", "1",
                                               str(teacher / "versions" / "1")]
    assert _digests(teacher)["best.pt"] == before["best.pt"]  # base kept, still selectable


def test_a_first_teacher_is_trained_into_a_version_that_serves(
        tiny_sites: dict, tmp_path: Path) -> None:
    from site_node.app import NodeSettings, handle_train

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "train_config.json").write_text(json.dumps(
        {"model": "tiny_unet", "size": 32, "epochs": 1, "max_steps_per_epoch": 1,
         "device": "cpu", "batch_size": 8}))
    node = NodeSettings.from_node_config({"data-path": str(tiny_sites["site_b"]),
                                          "teacher-dir": str(teacher), "site-name": "site_b"})
    reply = handle_train(node, TrainConfig(run_id="r", epochs=500))  # epochs ignored
    assert serving_dir(teacher) == teacher / "versions" / "1"
    card = json.loads((teacher / "versions" / "1" / "teacher.json").read_text())
    assert reply.case_count == 12 and card["architecture"] == "tiny_unet"
    assert json.loads((teacher / "versions" / "1" / "train_config.json").read_text())[
        "epochs"] == 1
    assert not (teacher / "teacher.json").exists()


def test_a_version_that_cannot_serve_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TeacherVersionError, match="not a complete teacher"):
        use_version(tmp_path, "3")
    with pytest.raises(TeacherVersionError, match="not 'base' or a positive integer"):
        use_version(tmp_path, "../x")
    assert not (tmp_path / "current").exists()
