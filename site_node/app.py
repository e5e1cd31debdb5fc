"""The hospital side of the federated transport: a Flower ``ClientApp`` run by a SuperNode.

Node config (``flower-supernode --node-config``): ``data-path`` (the private dataset),
``teacher-dir`` (the teacher run folder: ``best.pt``, ``split.json``, ``teacher.json``) and
``site-name``; egress keys ``state-dir``, ``audit-key``, ``policy-path`` (see
:mod:`site_node.egress`: every message is logged, every reply checked and signed).
The handlers are thin: they decode with :mod:`common.protocol`, call the pure functions below
(testable without a Flower runtime) and encode the reply. Nothing but metrics and teacher
outputs on the coordinator's proxy slices ever leaves the site.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from common.protocol import (
    EvalConfig,
    EvalReply,
    MsgType,
    ProtocolError,
    QueryConfig,
    TrainConfig,
    TrainReply,
    decode_eval,
    decode_query,
    decode_train,
    encode_eval_reply,
    encode_teacher_reply,
    encode_train_reply,
)
from site_node.egress import EgressGate, RequestInfo, codec_from_node_config

if TYPE_CHECKING:
    from common.kd.targets import TeacherTargets

app = ClientApp()


@dataclass(frozen=True)
class NodeSettings:
    """What the SuperNode's ``--node-config`` says about this site."""

    data: Path
    teacher_dir: Path
    site_name: str

    @staticmethod
    def from_node_config(node_config: dict[str, Any]) -> NodeSettings:
        """Parse ``data-path``, ``teacher-dir``, ``site-name``; a missing key is one clear line."""
        missing = [k for k in ("data-path", "teacher-dir", "site-name") if k not in node_config]
        if missing:
            raise ValueError(f"supernode --node-config lacks {missing}")
        return NodeSettings(Path(str(node_config["data-path"])),
                            Path(str(node_config["teacher-dir"])),
                            str(node_config["site-name"]))


def _case_count(teacher_dir: Path) -> int:
    split = json.loads((teacher_dir / "split.json").read_text())
    return sum(len(split[k]) for k in ("train", "val", "test"))


def _train_config(node: NodeSettings, cfg: TrainConfig) -> Any:
    from site_node.train_config import TeacherTrainConfig

    saved = node.teacher_dir / "train_config.json"
    base = (TeacherTrainConfig.model_validate_json(saved.read_text()) if saved.exists()
            else TeacherTrainConfig())
    over = {"model": cfg.model or None, "epochs": cfg.epochs or None, "size": cfg.size or None}
    return base.model_copy(update={k: v for k, v in over.items() if v is not None})


def handle_train(node: NodeSettings, cfg: TrainConfig) -> TrainReply:
    """Train the local teacher unless ``best.pt`` exists (and no retraining is forced)."""
    card_path = node.teacher_dir / "teacher.json"
    if cfg.force_retrain or not (node.teacher_dir / "best.pt").exists() or not card_path.exists():
        from site_node.train import run_training

        run_training(node.data, _train_config(node, cfg), node.teacher_dir)
    card = json.loads(card_path.read_text())
    return TrainReply(val_dice=float(card["val_dice"]), case_count=_case_count(node.teacher_dir))


def handle_query(node: NodeSettings, cfg: QueryConfig, images: np.ndarray, masks: np.ndarray
                 ) -> TeacherTargets:
    """The teacher's outputs on proxy slices ``images (N,1,S,S)``, ``masks (N,S,S)`` (J = 1)."""
    from common.models.checkpoint import load_model
    from common.training import select_device
    from site_node.teacher_outputs import teacher_outputs

    dev = select_device("auto")
    model, _ = load_model(node.teacher_dir / "best.pt")
    return teacher_outputs(model, images, masks, dev, cfg.batch_size, cfg.at_form, cfg.p)


def handle_evaluate(node: NodeSettings, cfg: EvalConfig, state: dict[str, Any]) -> EvalReply:
    """Score the student ``state`` on this site's private test split (3D Dice/VOE/HD95)."""
    from common.evaluate import evaluate_volumes
    from common.metrics import summarise
    from common.models import build_model
    from common.training import select_device
    from coordinator.distill.config import SiteSpec
    from coordinator.distill.experiment import load_site_test

    model = build_model(cfg.model_name, in_channels=1, num_classes=2)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ProtocolError(f"{node.site_name}: student weights do not fit "
                            f"{cfg.model_name}: {first}") from None
    dev = select_device("auto")
    vols = load_site_test(SiteSpec(name=node.site_name, data=node.data,
                                   teacher_dir=node.teacher_dir), cfg.size)
    scores, _ = evaluate_volumes(model.to(dev), vols, dev)
    return EvalReply(**summarise(scores))


# ----------------------------------------------------------------------------- Flower handlers
def _gate(node: NodeSettings, context: Context) -> EgressGate:
    return EgressGate.from_node_config(dict(context.node_config), node.teacher_dir)


def _peer(msg: Message) -> str:
    return f"node {msg.metadata.src_node_id}"


@app.train()
def train(msg: Message, context: Context) -> Message:
    """``train``: reply ``val_dice`` and ``case_count`` only (never weights)."""
    node = NodeSettings.from_node_config(dict(context.node_config))
    cfg = decode_train(msg.content)
    req = RequestInfo(str(MsgType.TRAIN), cfg.run_id, _peer(msg))

    def compute() -> RecordDict:
        reply = handle_train(node, cfg)
        print(f"[site {node.site_name}] train: val Dice {reply.val_dice:.4f}", flush=True)
        return encode_train_reply(node.site_name, reply)

    return Message(_gate(node, context).respond(req, msg.content, compute), reply_to=msg)


@app.query("teacher_outputs")
def query(msg: Message, context: Context) -> Message:
    """``query.teacher_outputs``: the teacher's targets on one chunk of proxy slices."""
    node = NodeSettings.from_node_config(dict(context.node_config))
    cfg, images, masks = decode_query(msg.content)
    req = RequestInfo(str(MsgType.QUERY), cfg.run_id, _peer(msg), len(images), cfg.size)

    def compute() -> RecordDict:
        targets = handle_query(node, cfg, images, masks)
        print(f"[site {node.site_name}] query chunk {cfg.chunk}: {len(images)} slices",
              flush=True)
        codec = codec_from_node_config(dict(context.node_config), cfg.temperature)
        return encode_teacher_reply(node.site_name, cfg, targets, codec)

    return Message(_gate(node, context).respond(req, msg.content, compute), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """``evaluate``: the student's metric summaries on the private test split."""
    node = NodeSettings.from_node_config(dict(context.node_config))
    cfg, state = decode_eval(msg.content)
    req = RequestInfo(str(MsgType.EVALUATE), cfg.run_id, _peer(msg))

    def compute() -> RecordDict:
        reply = handle_evaluate(node, cfg, state)
        print(f"[site {node.site_name}] evaluate {cfg.run_name}: Dice {reply.dice_mean:.4f}",
              flush=True)
        return encode_eval_reply(node.site_name, reply)

    return Message(_gate(node, context).respond(req, msg.content, compute), reply_to=msg)
