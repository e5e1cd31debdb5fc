"""The hospital side of the federated transport: a Flower ``ClientApp`` run by a SuperNode.

Node config (``flower-supernode --node-config``, parsed into
:class:`site_node.node_config.NodeSettings`): ``data-path`` (the private dataset),
``teacher-dir`` (the teacher folder: ``best.pt``, ``split.json``, ``teacher.json``; the serving
version of :mod:`site_node.teacher_versions`) and
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
    CASE_METRICS,
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
from site_node.membership import teacher_fingerprints
from site_node.node_config import NodeSettings
from site_node.policy import EgressPolicy, RemoteTrainPolicy, load_policy
from site_node.teacher_versions import (
    is_complete,
    new_version_dir,
    remote_overrides,
    serving_dir,
    use_version,
)

if TYPE_CHECKING:
    from common.kd.targets import TeacherTargets



class GatedClientApp(ClientApp):
    """A ``ClientApp`` whose unroutable messages leave a signed trace too: Flower 1.42 looks a
    message's handler up (``ClientApp.__call__``) before any mod runs, so a message of an
    unknown or invalid type (``query.steal``) would never reach :func:`egress_mod`. Such a
    message is logged and refused in the site's egress log here, then refused."""

    def __call__(self, message: Message, context: Context) -> Message:
        mtype = str(message.metadata.message_type)
        if self._call is None and unrouted(self, mtype):
            from site_node.egress import refuse_unrouted

            raise refuse_unrouted(message, context, unrouted(self, mtype) or "")
        return super().__call__(message, context)


def unrouted(client_app: ClientApp, mtype: str) -> str | None:
    """Why no handler of ``client_app`` takes message type ``mtype`` (None: one does)."""
    from flwr.app.metadata import validate_message_type

    if not validate_message_type(mtype):
        return f"invalid message type {mtype[:80]!r}"
    full = mtype if "." in mtype else f"{mtype}.default"
    if full not in client_app._registered_funcs:
        return f"{mtype[:80]}: unknown message type (no handler)"
    return None


app = GatedClientApp(mods=[egress_mod])  # the egress gate wraps every handler registered below
log = logging.getLogger(__name__)
__all__ = ["NodeSettings", "app", "handle_evaluate", "handle_query", "handle_train"]


def _case_count(teacher_dir: Path) -> int:
    split = json.loads((teacher_dir / "split.json").read_text())
    return sum(len(split[k]) for k in ("train", "val", "test"))


def _train_config(node: NodeSettings, cfg: TrainConfig, rule: RemoteTrainPolicy) -> Any:
    """The site's own train config (the serving teacher's, else the base folder's, else the
    defaults) with only the request's overrides that the site's ``remote_train`` rule allows."""
    from site_node.train_config import TeacherTrainConfig

    saved = [d / "train_config.json" for d in (serving_dir(node.teacher_dir), node.teacher_dir)]
    found = next((p for p in saved if p.is_file()), None)
    base = (TeacherTrainConfig.model_validate_json(found.read_text()) if found is not None
            else TeacherTrainConfig())
    over, ignored = remote_overrides(cfg, rule)
    if ignored:
        log.warning("[site %s] train request: ignored %s (not allowed by this site's "
                    "remote_train policy)", node.site_name, ", ".join(ignored))
    return TeacherTrainConfig.model_validate({**base.model_dump(), **over})


def _train_version(node: NodeSettings, cfg: TrainConfig, rule: RemoteTrainPolicy,
                   first: bool) -> None:
    """Train a NEW version folder; it serves at once only when no teacher served before."""
    from site_node.train import run_training

    folder = new_version_dir(node.teacher_dir)
    run_training(node.data, _train_config(node, cfg, rule), folder)
    if first:
        use_version(node.teacher_dir, folder.name)
    log.info("[site %s] trained teacher version %s%s", node.site_name, folder.name,
             " (serving)" if first else f"; serve it with `site-node teacher use "
             f"{folder.name} --teacher-dir {node.teacher_dir}`")


def handle_train(node: NodeSettings, cfg: TrainConfig, policy: EgressPolicy | None = None
                 ) -> TrainReply:
    """Reply the serving teacher's scores. Train only when no teacher serves yet, or on
    ``force_retrain`` if the site's policy (``policy``, default the node's ``policy-path``)
    allows it; training writes a new version and never overwrites a teacher."""
    policy = policy or load_policy(node.policy_path)
    rule = policy.remote_train
    first = not is_complete(serving_dir(node.teacher_dir))
    if first or (cfg.force_retrain and rule.allow_retrain):
        _train_version(node, cfg, rule, first)
    elif cfg.force_retrain:
        log.warning("[site %s] train request: force_retrain ignored (remote_train."
                    "allow_retrain is false in this site's policy)", node.site_name)
    serving = serving_dir(node.teacher_dir)
    if policy.membership.enabled:  # made now (once per teacher), not on the first query
        try:
            teacher_fingerprints(node.data, serving, policy.membership.resolution)
        except (OSError, ValueError, KeyError) as exc:  # queries will be refused (fail closed)
            log.warning("[site %s] membership fingerprints: %s", node.site_name, exc)
    from common.data.teacher_card import TeacherCard

    card = TeacherCard.read(serving)
    val = card.val_dice  # None: no validation cases (small_site = "train_on_all")
    return TrainReply.model_validate({"val_dice": float("nan") if val is None else float(val),
                                      "case_count": _case_count(serving),
                                      **TrainReply.plan_fields(card.plan)})


def handle_query(node: NodeSettings, cfg: QueryConfig, images: np.ndarray, masks: np.ndarray
                 ) -> TeacherTargets:
    """The teacher's outputs on proxy slices ``images (N,1,S,S)``, ``masks (N,S,S)`` (J = 1),
    computed in the teacher's own plan and mapped back to the query grid (``cfg.plan()``;
    :mod:`common.kd.plan_bridge`)."""
    from common.data.test_split import site_plan
    from common.kd.plan_bridge import bridged_teacher_outputs
    from common.models.checkpoint import load_model
    from common.training import select_device

    dev = select_device("auto")
    folder = serving_dir(node.teacher_dir)
    model, _ = load_model(folder / "best.pt")
    return bridged_teacher_outputs(model, images, masks, dev, cfg.plan(), site_plan(folder),
                                   cfg.batch_size, cfg.at_form, cfg.p,
                                   whole_field=cfg.whole_field)


def case_scores(scores: dict[str, Any], keys: list[str]) -> dict[str, dict[str, float | None]]:
    """Per-case ``keys`` (of dice, voe, hd95) of ``scores`` (case id -> SegScores, in the test
    split's order), keyed ``case000``, ``case001``, ... (never the file names); a non-finite
    score is None (left out on the wire)."""
    import math

    out: dict[str, dict[str, float | None]] = {}
    for i, s in enumerate(scores.values()):
        vals = {k: float(getattr(s, k)) for k in keys}
        out[f"case{i:03d}"] = {k: v if math.isfinite(v) else None for k, v in vals.items()}
    return out


def overlay_dir(node: NodeSettings, run_name: str) -> Path:
    """Where the site draws the overlays of a student it scored: ``<state-dir>/overlays/<run>``
    (patient images: they never leave the site; the coordinator's report says so)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_name)[:100] or "run"
    return node.resolved_state_dir() / "overlays" / safe


def handle_evaluate(node: NodeSettings, cfg: EvalConfig, state: dict[str, Any],
                    policy: EgressPolicy | None = None) -> EvalReply:
    """Score the student ``state`` on this site's private test split (3D Dice/VOE/HD95): the
    summaries, and each case's scores where the site's policy (``policy``, default the node's
    ``policy-path``) lets them leave (``replies.evaluate.case_metric_keys``)."""
    from common.data.test_split import load_test_split
    from common.inference.evaluate import evaluate_volumes, save_case_overlays
    from common.metrics import summarise
    from common.models import build_model
    from common.training import select_device

    model = build_model(cfg.model_name, in_channels=1, num_classes=2)
    if cfg.local_bn is not None:  # FedBN: the site's own BatchNorm (common.fedbn)
        from common.fedbn import load_site_bn

        state = {**state, **load_site_bn(node.resolved_state_dir(), cfg.run_id, cfg.local_bn)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ProtocolError(f"{node.site_name}: student weights do not fit "
                            f"{cfg.model_name}: {first}") from None
    dev = select_device("auto")
    vols = load_test_split(node.data, serving_dir(node.teacher_dir), cfg.size, cfg.plan())
    scores, preds = evaluate_volumes(model.to(dev), vols, dev)
    save_case_overlays(vols, preds, overlay_dir(node, cfg.run_name), max_cases=2)  # stay here
    rule = (policy or load_policy(node.policy_path)).replies.get("evaluate")
    keys = [k for k in CASE_METRICS if rule is not None and k in rule.case_metric_keys]
    cases = case_scores(scores, keys) if keys else {}
    return EvalReply.model_validate({**summarise(scores), "cases": cases})  # NaN -> null


# ----------------------------------------------------------------------------- Flower handlers
# No egress code here: ``egress_mod`` logs each request, admits it, checks and signs each reply.
def _node(context: Context) -> NodeSettings:
    return NodeSettings.from_node_config(dict(context.node_config))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """``train``: reply ``val_dice`` and ``case_count`` only (never weights)."""
    node = _node(context)
    reply = handle_train(node, decode_train(msg.content))
    log.info("[site %s] train: val Dice %s", node.site_name, reply.val_dice)  # None: undefined
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
    log.info("[site %s] evaluate %s: Dice %s", node.site_name, cfg.run_name, reply.dice_mean)
    return Message(encode_eval_reply(node.site_name, reply), reply_to=msg)


@app.query("fedavg_train")
def fedavg_train(msg: Message, context: Context) -> Message:
    """``query.fedavg_train`` (FedAvg baseline runs only): releases model weights, so it is
    refused unless this site's policy sets ``weight_release.allow`` (:mod:`site_node.fedavg`)."""
    from site_node.fedavg import handle_fedavg

    node = _node(context)
    reply = handle_fedavg(node, msg.content)
    log.warning("[site %s] fedavg: released model weights (audit: query.fedavg_train)",
                node.site_name)
    return Message(reply, reply_to=msg)
