"""The hospital side of the federated transport: a Flower ``ClientApp`` run by a SuperNode.

Node config (``flower-supernode --node-config``, parsed into
:class:`site_node.node_config.NodeSettings`): ``data-path`` (the private dataset),
``teacher-dir`` (the teacher run folder: ``best.pt``, ``split.json``, ``teacher.json``) and
``site-name``; egress keys ``state-dir``, ``audit-key``, ``policy-path``, codec keys.
The egress gate is the app's mod (:func:`site_node.egress.egress_mod`, installed by
``ClientApp(mods=[...])``): every message to ANY handler registered on :data:`app` is logged and
every reply checked against the egress policy and signed, with no code in the handler.
The handlers are thin: they decode with :mod:`common.protocol`, call the pure functions below
(testable without a Flower runtime) and encode the reply. Nothing but metrics and teacher
outputs on the coordinator's proxy slices ever leaves the site.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from common.protocol import (
    EvalConfig,
    EvalReply,
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
from site_node.egress import codec_from_node_config, egress_mod
from site_node.node_config import NodeSettings

if TYPE_CHECKING:
    from common.kd.targets import TeacherTargets

app = ClientApp(mods=[egress_mod])  # the egress gate wraps every handler registered below
log = logging.getLogger(__name__)
__all__ = ["NodeSettings", "app", "handle_evaluate", "handle_query", "handle_train"]


def _case_count(teacher_dir: Path) -> int:
    split = json.loads((teacher_dir / "split.json").read_text())
    return sum(len(split[k]) for k in ("train", "val", "test"))


def _train_config(node: NodeSettings, cfg: TrainConfig) -> Any:
    from site_node.train_config import TeacherTrainConfig

    saved = node.teacher_dir / "train_config.json"
    base = (TeacherTrainConfig.model_validate_json(saved.read_text()) if saved.exists()
            else TeacherTrainConfig())
    over = {"model": cfg.model or None, "epochs": cfg.epochs or None, "size": cfg.size or None}
    return TeacherTrainConfig.model_validate(  # overrides validated (registry names too)
        {**base.model_dump(), **{k: v for k, v in over.items() if v is not None}})


def handle_train(node: NodeSettings, cfg: TrainConfig) -> TrainReply:
    """Train the local teacher unless ``best.pt`` exists (and no retraining is forced)."""
    card_path = node.teacher_dir / "teacher.json"
    if cfg.force_retrain or not (node.teacher_dir / "best.pt").exists() or not card_path.exists():
        from site_node.train import run_training

        run_training(node.data, _train_config(node, cfg), node.teacher_dir)
    card = json.loads(card_path.read_text())
    val = card.get("val_dice")  # null: no validation cases (small_site = "train_on_all")
    return TrainReply(val_dice=float("nan") if val is None else float(val),
                      case_count=_case_count(node.teacher_dir))


def handle_query(node: NodeSettings, cfg: QueryConfig, images: np.ndarray, masks: np.ndarray
                 ) -> TeacherTargets:
    """The teacher's outputs on proxy slices ``images (N,1,S,S)``, ``masks (N,S,S)`` (J = 1)."""
    from common.kd.teacher_outputs import teacher_outputs
    from common.models.checkpoint import load_model
    from common.training import select_device

    dev = select_device("auto")
    model, _ = load_model(node.teacher_dir / "best.pt")
    return teacher_outputs(model, images, masks, dev, cfg.batch_size, cfg.at_form, cfg.p)


def handle_evaluate(node: NodeSettings, cfg: EvalConfig, state: dict[str, Any]) -> EvalReply:
    """Score the student ``state`` on this site's private test split (3D Dice/VOE/HD95)."""
    from common.data.test_split import load_test_split
    from common.evaluate import evaluate_volumes
    from common.metrics import summarise
    from common.models import build_model
    from common.training import select_device

    model = build_model(cfg.model_name, in_channels=1, num_classes=2)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ProtocolError(f"{node.site_name}: student weights do not fit "
                            f"{cfg.model_name}: {first}") from None
    dev = select_device("auto")
    vols = load_test_split(node.data, node.teacher_dir, cfg.size)
    scores, _ = evaluate_volumes(model.to(dev), vols, dev)
    return EvalReply(**summarise(scores))


# ----------------------------------------------------------------------------- Flower handlers
# No egress code here: ``egress_mod`` logs each request, admits it, checks and signs each reply.
def _node(context: Context) -> NodeSettings:
    return NodeSettings.from_node_config(dict(context.node_config))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """``train``: reply ``val_dice`` and ``case_count`` only (never weights)."""
    node = _node(context)
    reply = handle_train(node, decode_train(msg.content))
    log.info("[site %s] train: val Dice %.4f", node.site_name, reply.val_dice)
    return Message(encode_train_reply(node.site_name, reply), reply_to=msg)


@app.query("teacher_outputs")
def query(msg: Message, context: Context) -> Message:
    """``query.teacher_outputs``: the teacher's targets on one chunk of proxy slices."""
    node = _node(context)
    cfg, images, masks = decode_query(msg.content)
    targets = handle_query(node, cfg, images, masks)
    log.info("[site %s] query chunk %d: %d slices", node.site_name, cfg.chunk, len(images))
    codec = codec_from_node_config(dict(context.node_config), cfg.temperature)
    return Message(encode_teacher_reply(node.site_name, cfg, targets, codec), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """``evaluate``: the student's metric summaries on the private test split."""
    node = _node(context)
    cfg, state = decode_eval(msg.content)
    reply = handle_evaluate(node, cfg, state)
    log.info("[site %s] evaluate %s: Dice %.4f", node.site_name, cfg.run_name, reply.dice_mean)
    return Message(encode_eval_reply(node.site_name, reply), reply_to=msg)
