"""A site refuses the FedAvg message (``query.fedavg_train``, weights leave) unless its policy
allows weight release; an allowed release is logged as such in the audit log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from site_node.policy import WEIGHT_RELEASE_TYPE, check_reply, default_policy

pytestmark = pytest.mark.usefixtures("single_thread")
W = {"conv.weight": np.zeros((4, 1, 3, 3), np.float32)}  # 144 B


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_node_id", 7), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _allowing(max_bytes: int = 10**9) -> Any:
    pol = default_policy()
    return pol.model_copy(update={"weight_release": pol.weight_release.model_copy(
        update={"allow": True, "max_reply_bytes": max_bytes})})


def test_the_policy_denies_weight_release_by_default() -> None:
    scalars = {"site_name": "a", "release": "model weights", "num-examples": 3}
    refused = check_reply(default_policy(), WEIGHT_RELEASE_TYPE, W, scalars)
    assert not refused.allowed and "weight_release.allow = false" in str(refused.reason)
    assert check_reply(_allowing(), WEIGHT_RELEASE_TYPE, W, scalars).allowed
    over = check_reply(_allowing(max_bytes=143), WEIGHT_RELEASE_TYPE, W, scalars)
    assert "weights total 144 B > budget 143 B" in str(over.reason)
    extra = check_reply(_allowing(), WEIGHT_RELEASE_TYPE, W, {**scalars, "case_ids": "x"})
    assert not extra.allowed and "'case_ids' not allowed" in str(extra.reason)


def _site(tiny_sites: dict, tiny_teachers: dict, tmp_path: Path, allow: bool) -> dict:
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teachers["site_a"], teacher)
    policy = tmp_path / "policy.yaml"  # JSON is YAML
    policy.write_text(json.dumps(_allowing().model_dump() if allow
                                 else default_policy().model_dump()))
    return {"data-path": str(tiny_sites["site_a"]), "teacher-dir": str(teacher),
            "site-name": "site_a", "state-dir": str(tmp_path / "state"),
            "policy-path": str(policy)}


def _request() -> Any:
    """Flower's own FedAvg train message for a tiny_unet, retyped to query.fedavg_train."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Message
    from flwr.serverapp.strategy import FedAvg

    from common.models import build_model

    class Grid:  # what configure_train asks of a Grid: the node ids
        def get_node_ids(self) -> list[int]:
            return [7]

    torch.manual_seed(0)
    state = build_model("tiny_unet", in_channels=1, num_classes=2).state_dict()
    conf = ConfigRecord({"local-epochs": 1, "model": "tiny_unet", "size": 32, "batch_size": 8,
                         "max_lr": 0.005, "base_lr": 1e-6, "step_size_up": 10,
                         "weight_decay": 0.0, "dice_weight": 0.2, "lovasz_weight": 0.3,
                         "run_id": "fa1"})
    msg = next(iter(FedAvg(min_available_nodes=1, min_train_nodes=1).configure_train(
        1, ArrayRecord(state), conf, Grid())))  # type: ignore[arg-type]
    return Message(msg.content, dst_node_id=7, message_type=WEIGHT_RELEASE_TYPE)


def _entries(node_config: dict) -> list[dict]:
    path = Path(node_config["state-dir"]) / "audit" / "egress.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


def _context(node_config: dict) -> Any:
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                   run_config={})


def test_a_site_refuses_fedavg_unless_its_policy_allows_it(
        task_identity: None, tiny_sites: dict, tiny_teachers: dict, tmp_path: Path) -> None:
    from site_node.app import app

    denied = _site(tiny_sites, tiny_teachers, tmp_path / "deny", allow=False)
    from site_node.egress import EgressRefused

    with pytest.raises(EgressRefused, match="releases no model weights"):  # before training
        app(_request(), _context(denied))
    ins, out = _entries(denied)
    assert (ins["msg_type"], ins["decision"]) == (WEIGHT_RELEASE_TYPE, "received")
    assert out["decision"] == "refused" and not out["arrays"]  # refused before training
    assert "weight_release.allow = false" in out["reason"]

    allowed = _site(tiny_sites, tiny_teachers, tmp_path / "allow", allow=True)
    reply = app(_request(), _context(allowed))
    n_train = int(reply.content["metrics"]["num-examples"])
    assert n_train > 0 and "receipt" in reply.content
    ins, out = _entries(allowed)
    assert (out["msg_type"], out["decision"]) == (WEIGHT_RELEASE_TYPE, "sent")
    assert out["config"]["release"] == "model weights"
    names = {a["name"] for a in out["arrays"]}
    assert names == set(reply.content["arrays"].keys()) and len(names) > 4  # every weight


def test_run_allows_weight_release_only_with_the_flag(
        tiny_sites: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``site-node run --allow-weight-release`` (what site.sh passes for SITE_WEIGHT_RELEASE=on):
    the node's policy is the given one with weight_release.allow = true; without it, none."""
    import shlex

    from common.config import load_config
    from site_node.cli import main
    from site_node.policy import EgressPolicy

    base = ["--data", str(tiny_sites["site_a"]), "--coordinator", "127.0.0.1:8000", "--name",
            "site_a", "--state-dir", str(tmp_path / "state"), "--teacher-dir",
            str(tmp_path / "teacher"), "--dry-run", "--insecure"]

    def node_config(argv: list[str]) -> str:
        assert main(argv) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if "flower-supernode" in x)
        cmd = shlex.split(line)
        return cmd[cmd.index("--node-config") + 1]

    assert "policy-path" not in node_config(base)
    own = default_policy().model_copy(update={"max_slices_per_query": 77})
    (tmp_path / "own.yaml").write_text(json.dumps(own.model_dump(mode="json")))
    conf = node_config([*base, "--allow-weight-release", "--policy", str(tmp_path / "own.yaml")])
    written = tmp_path / "state" / "policy_weight_release.yaml"
    assert f'policy-path="{written}"' in conf
    pol = load_config(written, EgressPolicy)
    assert pol.weight_release.allow and pol.max_slices_per_query == 77  # the site's own, + allow
    assert pol.model_copy(update={"weight_release": own.weight_release}) == own
