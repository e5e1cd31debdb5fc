"""FedAvg baseline at a site: the ``query.fedavg_train`` message.

Flower allows message types ``train | evaluate | query.<name>`` only, and ``train`` is already
the site's teacher training (whose reply never carries weights), so a FedAvg client update is
the separate type ``query.fedavg_train``. Its reply RELEASES MODEL WEIGHTS trained on the site's
private data, so the site's egress policy denies it by default: :func:`handle_fedavg` refuses
before touching any data unless ``weight_release.allow = true`` in the site's policy file, and
the egress gate (``site_node.egress``, :func:`site_node.policy.check_weight_release`) checks the
reply again. Each release is logged in the audit log as a ``query.fedavg_train`` ``sent``
entry listing every weight array's digest, with ``release = "model weights"`` in its config.

Request (Flower's ``FedAvg`` message, retyped): ``arrays`` = the global student weights (packed:
one flat array per dtype, the layout in the config's ``layout-*`` fields,
``common.protocol.pack_weights``; or one array per tensor), ``config`` = :class:`FedAvgRequest`
(``server-round`` and ``local-epochs`` as Flower names them).
Reply: ``arrays`` = the updated weights (packed as the request was), ``metrics`` =
``num-examples`` (training slices) and ``train-loss``, ``config`` = ``site_name`` and
``release``. The update itself is :func:`common.fedavg_local.local_update`, as in
``coordinator distill --local``.

The FedProx and FedBN peers use the same message. FedProx: Flower's ``FedProx`` adds
``proximal-mu`` to the config and the update adds the proximal term. FedBN (``local-bn =
true``): the request carries every weight but the BatchNorm layers'; the site completes them
with its own BatchNorm state, kept between rounds in ``<state dir>/fedbn/<run id>/seed<seed>.pt``
(:mod:`common.fedbn`: a ClientApp is a fresh process per message), and answers without them
(``release = "model weights less BatchNorm"``); its ``evaluate`` reply for that row uses the
same kept state (``EvalConfig.local_bn``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
from pydantic import Field

from common.config import StrictModel
from common.data.augment import AugmentConfig
from site_node.node_config import NodeSettings
from site_node.policy import WEIGHT_RELEASE_TYPE, EgressPolicy, load_policy
from site_node.teacher_versions import serving_dir

if TYPE_CHECKING:
    from flwr.app import RecordDict

    from common.data.plan import Plan
    from common.data.slices import Volume
    from common.protocol import Layout

#: the reply's ``release`` entry (audit log), by ``local_bn``
RELEASE = {False: "model weights", True: "model weights less BatchNorm"}

__all__ = ["WEIGHT_RELEASE_TYPE", "FedAvgRequest", "handle_fedavg", "release_policy_file",
           "weight_release_refusal"]


class FedAvgRequest(StrictModel):
    """The ``config`` record of a ``query.fedavg_train`` request (hyphens as underscores)."""

    run_id: str = Field(default="", max_length=128)
    server_round: int = Field(ge=1, le=100_000)
    local_epochs: int = Field(ge=1, le=1000)
    model: str = Field(max_length=64)
    size: int = Field(ge=16, le=1024)
    plan_json: str = Field(default="", max_length=4096)
    augment_json: str = Field(default="", max_length=4096)
    batch_size: int = Field(ge=1, le=4096)
    max_lr: float = Field(gt=0.0, le=10.0)
    base_lr: float = Field(ge=0.0, le=10.0)
    step_size_up: int = Field(ge=1, le=10_000_000)
    weight_decay: float = Field(ge=0.0, le=1.0)
    dice_weight: float = Field(ge=0.0, le=1000.0)
    lovasz_weight: float = Field(ge=0.0, le=1000.0)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    padding: Literal["exclude", "augment_kd", "none"] = "exclude"  # [kd] padding
    proximal_mu: float = Field(default=0.0, ge=0.0, le=1000.0)  # FedProx (Flower's key)
    local_bn: bool = False  # FedBN: BatchNorm stays at the site


def weight_release_refusal(policy: EgressPolicy) -> str | None:
    """Why this site refuses to release weights (``None`` when its policy allows it)."""
    if policy.weight_release.allow:
        return None
    return (f"{WEIGHT_RELEASE_TYPE}: this site's policy releases no model weights "
            "(weight_release.allow = false)")


def decode_request(content: RecordDict) -> tuple[FedAvgRequest, dict, Layout | None]:
    """``(request config, global state_dict, its packed layout or None)`` of a
    ``query.fedavg_train`` message (weights packed by ``common.protocol.pack_weights``, or
    one array per tensor)."""
    from flwr.app import ArrayRecord, ConfigRecord

    from common.protocol import unpack_weights, without_layout

    conf = dict(cast(ConfigRecord, content["config"]))
    req = FedAvgRequest.model_validate({str(k).replace("-", "_"): v
                                        for k, v in without_layout(conf).items()})
    state, layout = unpack_weights(conf, cast(ArrayRecord, content["arrays"]), "coordinator")
    return req, state, layout


def _plan(node: NodeSettings, req: FedAvgRequest) -> Plan | None:
    """The request's (student's) plan with this site's own target labels."""
    from common.data.plan import Plan
    from common.data.test_split import site_plan

    own = site_plan(serving_dir(node.teacher_dir))
    use = Plan.model_validate_json(req.plan_json) if req.plan_json else own
    if use is not None and own is not None:
        use = use.model_copy(update={"labels": own.labels, "label_name": own.label_name})
    return use


def train_slices(node: NodeSettings, req: FedAvgRequest
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Volume]]:
    """The site's training-split slices: ``images (N,1,S,S)`` float32, ``masks (N,S,S)``
    uint8 and ``extents (N, 4)`` (where each slice's real pixels lie on the canvas), and the
    volumes they come from (whole-field crops of fields wider than the canvas)."""
    from common.data.layout import discover_dataset
    from common.data.slices import load_volumes
    from common.data.split import load_split

    split = load_split(serving_dir(node.teacher_dir) / "split.json")
    vols = load_volumes(discover_dataset(node.data), split.train, req.size, plan=_plan(node, req))
    images = np.concatenate([v.image[:, None] for v in vols]).astype(np.float32)
    extents = np.concatenate([np.tile(v.extent, (len(v.image), 1)) for v in vols])
    return images, np.concatenate([v.label for v in vols]).astype(np.uint8), extents, vols


def handle_fedavg(node: NodeSettings, content: RecordDict, policy: EgressPolicy | None = None
                  ) -> RecordDict:
    """One FedAvg client update on this site's training split; refused (PermissionError,
    before any data is read) unless the site's policy allows weight release."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    from common.fedavg_local import LocalSpec, local_update
    from common.fedbn import keep_site_bn, with_site_bn
    from common.training import select_device

    why = weight_release_refusal(policy or load_policy(node.policy_path))
    if why:
        raise PermissionError(why)
    req, state, layout = decode_request(content)
    images, masks, extents, vols = train_slices(node, req)
    spec = LocalSpec(**req.model_dump(exclude={"run_id", "size", "plan_json", "augment_json",
                                               "local_bn"}))
    aug = (AugmentConfig.model_validate_json(req.augment_json) if req.augment_json
           else AugmentConfig())
    if req.local_bn:
        state = with_site_bn(state, req.model, node.resolved_state_dir(), req.run_id,
                             req.seed, req.server_round)
    new, loss = local_update(state, images, masks, spec, aug, select_device("auto"), extents,
                             vols)
    if req.local_bn:
        new = keep_site_bn(new, req.model, node.resolved_state_dir(), req.run_id, req.seed)
    from common.protocol import pack_weights

    arrays = (ArrayRecord(new) if layout is None  # answered as asked: packed in request order
              else pack_weights({k: new[k] for k in layout.names})[1])
    return RecordDict({
        "arrays": arrays,
        "metrics": MetricRecord({"num-examples": len(images), "train-loss": loss}),
        "config": ConfigRecord({"site_name": node.site_name, "release": RELEASE[req.local_bn]})})


def release_policy_file(base: Path | None, state_dir: Path) -> Path:
    """``site-node run --allow-weight-release`` (FedAvg baseline runs only): the site's policy
    (``base``, else the built-in one) with ``weight_release.allow = true``, written to
    ``STATE_DIR/policy_weight_release.yaml``; its path (the node's ``policy-path``)."""
    import json

    from common.config import load_config
    from site_node.policy import default_policy

    pol = load_config(base, EgressPolicy) if base is not None else default_policy()
    pol = pol.model_copy(update={"weight_release": pol.weight_release.model_copy(
        update={"allow": True})})
    path = state_dir / "policy_weight_release.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(pol.model_dump(mode="json"), indent=1))  # JSON is YAML
    return path
