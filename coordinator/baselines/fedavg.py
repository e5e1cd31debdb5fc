"""The FedAvg-family peers in ``--local``: an in-process loop around Flower's own strategy object.

Three rows share it (:func:`peer_specs`): ``fedavg`` (Flower's ``FedAvg``), ``fedprox``
(Flower's ``FedProx``: the same average, ``proximal-mu`` in the config, the proximal term in the
local update) and ``fedbn`` (Flower's ``FedAvg`` over every weight but the BatchNorm layers',
which stay at each site: :mod:`common.fedbn`, ``local-bn`` in the config). All travel as
``query.fedavg_train``.

Each round: ``strategy.configure_train`` builds the real Flower ``Message``s (global weights as
an ``ArrayRecord`` plus a ``ConfigRecord``); every addressed site trains the student on its
private training split for ``local_epochs`` epochs and answers with a real reply ``Message``
(``Message(RecordDict, reply_to=msg)``: ``arrays`` = its weights, ``metrics`` with
``num-examples`` = its training slices); ``strategy.aggregate_train`` (Flower's weighted average,
not ours) makes the next global weights. Every request and reply payload is measured and logged
(:class:`coordinator.baselines.costs.PayloadLog`).

Local training: :func:`common.fedavg_local.local_update`, the very function a site's
``query.fedavg_train`` handler (:mod:`site_node.fedavg`) runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from common.data.augment import AugmentConfig
from common.fedavg_local import LocalSpec, local_update
from common.fedbn import keep_site_bn, with_site_bn
from common.training import iterate_progress
from coordinator.baselines.costs import PayloadLog
from coordinator.distill.config import ExperimentConfig, FedAvgSpec, FedBNSpec, FedProxSpec
from coordinator.distill.proxy import ProxySet

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import Strategy

#: The message type a site would serve FedAvg under ("train" is the teacher's own training).
FEDAVG_MSG_TYPE = "query.fedavg_train"
SERVER_NODE = 0


def build_strategy(spec: FedAvgSpec, n_sites: int) -> Strategy:
    """Flower's ``FedAvg`` (weighted by ``num-examples``), or its ``FedProx`` for a
    :class:`FedProxSpec` (``proximal-mu`` = ``spec.mu`` in every request); no federated
    evaluation."""
    from flwr.serverapp.strategy import FedAvg, FedProx

    kw = {"fraction_train": spec.fraction_train, "fraction_evaluate": 0.0,
          "min_train_nodes": 1, "min_available_nodes": n_sites}
    if isinstance(spec, FedProxSpec):
        return FedProx(proximal_mu=spec.mu, **kw)  # type: ignore[arg-type]
    return FedAvg(**kw)  # type: ignore[arg-type]


def peer_specs(cfg: ExperimentConfig) -> list[tuple[str, FedAvgSpec]]:
    """The configured FedAvg-family rows, ``(run name, spec)``, in table order."""
    r = cfg.runs
    return [(name, spec) for name, spec in (("fedavg", r.fedavg), ("fedprox", r.fedprox),
                                            ("fedbn", r.fedbn)) if spec is not None]


def peer_label(spec: FedAvgSpec) -> str:
    """The row's ``weighting`` column, e.g. ``Flower FedProx mu=0.01 5 rounds x 1 ep``."""
    rounds = f"{spec.rounds} rounds x {spec.local_epochs} ep"
    if isinstance(spec, FedProxSpec):
        return f"Flower FedProx mu={spec.mu:g} {rounds}"
    if isinstance(spec, FedBNSpec):
        return f"FedBN (Flower FedAvg, BatchNorm kept at each site) {rounds}"
    return f"Flower FedAvg {rounds}"


def peer_left(spec: FedAvgSpec) -> str:
    """What left the sites (the cost table's column)."""
    return "model weights less BatchNorm" if isinstance(spec, FedBNSpec) else "model weights"


class LocalGrid:
    """What ``FedAvg.configure_train`` asks of a ``Grid`` in-process: the node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        """The sites' node ids (1..J)."""
        return list(self.node_ids)


@contextmanager
def task_identity(node_id: int, run_id: int = 1) -> Iterator[None]:
    """Set Flower's process task identity (normally set by the runtime) while building
    messages as ``node_id``; restored afterwards. As the server (``SERVER_NODE``) inside a
    runtime (a ServerApp: identity already set) the runtime's real run id is kept."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    if node_id == SERVER_NODE and saved[0] is not None:
        yield
        return
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = run_id, node_id, node_id
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


SPEC_KEYS = ("model", "local_epochs", "batch_size", "max_lr", "base_lr", "step_size_up",
             "weight_decay", "dice_weight", "lovasz_weight", "seed", "padding")


def fedavg_config(cfg: ExperimentConfig, plan_json: str, seed: int, run_id: str = "local",
                  spec: FedAvgSpec | None = None) -> dict[str, int | float | str | bool]:
    """The ``config`` record of every request of ``spec``'s row (default ``[runs.fedavg]``;
    ``server-round``, and FedProx's ``proximal-mu``, are added by Flower): what a site's
    ``query.fedavg_train`` handler needs (``site_node.fedavg.FedAvgRequest``); FedBN's adds
    ``local-bn = true``."""
    s, spec = cfg.student, spec or cfg.runs.fedavg or FedAvgSpec()
    bn: dict[str, bool] = {"local-bn": True} if isinstance(spec, FedBNSpec) else {}
    return {**bn, "run_id": run_id, "local-epochs": spec.local_epochs, "model": s.model,
            "size": s.size, "plan_json": plan_json, "augment_json": s.augment.model_dump_json(),
            "batch_size": s.batch_size, "max_lr": s.max_lr, "base_lr": s.base_lr,
            "step_size_up": s.step_size_up, "weight_decay": s.weight_decay,
            "dice_weight": cfg.kd.dice_weight, "lovasz_weight": cfg.kd.lovasz_weight,
            "seed": seed, "padding": cfg.kd.padding}


def spec_of(conf: ConfigRecord) -> tuple[LocalSpec, AugmentConfig]:
    """The client update a request's ``config`` record asks for."""
    vals = {k: conf[k.replace("_", "-") if k == "local_epochs" else k] for k in SPEC_KEYS}
    spec = LocalSpec(**vals, server_round=int(cast(int, conf["server-round"])),  # type: ignore[arg-type]
                     proximal_mu=float(cast(float, conf.get("proximal-mu", 0.0))))
    aug = str(conf["augment_json"])
    return spec, AugmentConfig.model_validate_json(aug) if aug else AugmentConfig()


@dataclass
class SiteClient:
    """One site's in-process FedAvg client: its training slices (read from its folder) and,
    for FedBN, the folder where it keeps its BatchNorm state (as a site's state dir)."""

    name: str
    data: ProxySet
    state_dir: Path | None = None

    def reply(self, msg: Message, node_id: int, device: torch.device) -> Message:
        """The real Flower reply to a FedAvg request: weights + ``num-examples``, computed by
        :func:`common.fedavg_local.local_update` (what a site's handler runs)."""
        from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

        from common.protocol import pack_weights, unpack_weights

        conf = cast("ConfigRecord", msg.content["config"])
        spec, aug = spec_of(conf)
        state, layout = unpack_weights(dict(conf), cast("ArrayRecord", msg.content["arrays"]),
                                       "fedavg")
        local_bn = bool(conf.get("local-bn", False))
        if local_bn:  # as a site does (site_node.fedavg.handle_fedavg)
            assert self.state_dir is not None, "FedBN needs the client's state_dir"
            state = with_site_bn(state, spec.model, self.state_dir, str(conf["run_id"]),
                                 spec.seed, spec.server_round)
        vols = next((v for first, v in self.data.crop_sources if first == 0), None)
        new, loss = local_update(state, self.data.images, self.data.masks, spec, aug, device,
                                 self.data.extents, vols)  # a site's whole-field crops
        if local_bn:
            assert self.state_dir is not None
            new = keep_site_bn(new, spec.model, self.state_dir, str(conf["run_id"]), spec.seed)
        arrays = (ArrayRecord(new) if layout is None  # as a site answers (site_node.fedavg)
                  else pack_weights({k: new[k] for k in layout.names})[1])
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord(
            {"num-examples": len(self.data), "train-loss": loss})})
        with task_identity(node_id):
            return Message(content, reply_to=msg)


Exchange = Callable[[list["Message"]], list["Message"]]


def local_exchange(clients: list[SiteClient], device: torch.device) -> Exchange:
    """In-process delivery: node id ``k+1`` is ``clients[k]``."""
    def exchange(msgs: list[Message]) -> list[Message]:
        return [clients[int(m.metadata.dst_node_id) - 1].reply(m, int(m.metadata.dst_node_id),
                                                                device) for m in msgs]
    return exchange


def grid_exchange(grid: Grid, timeout: float | None = None) -> Exchange:
    """Delivery over a Flower ``Grid`` (a ServerApp's; the Deployment Engine): sites that
    fail or refuse come back as error replies, which ``FedAvg`` leaves out of the average."""
    def exchange(msgs: list[Message]) -> list[Message]:
        return list(grid.send_and_receive(msgs, timeout=timeout))
    return exchange


def _retyped(msgs: list[Message]) -> list[Message]:
    """Flower's FedAvg messages as ``query.fedavg_train`` (``train`` is the teacher's)."""
    from flwr.app import Message

    with task_identity(SERVER_NODE):
        return [Message(m.content, dst_node_id=m.metadata.dst_node_id,
                        message_type=FEDAVG_MSG_TYPE) for m in msgs]


def run_fedavg(exchange: Exchange, names: dict[int, str], init: dict[str, torch.Tensor],
               spec: FedAvgSpec, config: dict[str, int | float | str | bool], log: PayloadLog,
               strategy: Strategy | None = None, grid: Any = None,
               desc: str = "[distill] fedavg rounds") -> dict[str, torch.Tensor]:
    """``spec.rounds`` rounds of Flower's FedAvg (``strategy``, default :func:`build_strategy`)
    over the sites ``names`` (node id -> site), from the global weights ``init``; every request
    (as the exchange sent it) and every non-error reply payload is logged. Returns the final
    global ``state_dict``. The weights travel packed (one flat array per dtype, the layout in
    the config's ``layout-*`` fields: ``common.protocol.pack_weights``): Flower ships a record
    of hundreds of tensors as ~2 objects each, and its average is element-wise, so averaging
    the packed arrays is averaging the tensors. Progress: a bar on a terminal, else a line
    ``desc: step r/R, elapsed, ETA`` every 30 s (:func:`common.training.iterate_progress`)."""
    from flwr.app import ConfigRecord

    from common.protocol import pack_weights, unpack_weights

    strategy = strategy or build_strategy(spec, len(names))
    grid = grid or LocalGrid(sorted(names))
    layout, arrays = pack_weights(init)
    for rnd in iterate_progress(range(1, spec.rounds + 1), desc):
        conf = ConfigRecord({**config, **layout})  # type: ignore[arg-type]
        with task_identity(SERVER_NODE):
            msgs = _retyped(list(strategy.configure_train(rnd, arrays, conf, grid)))
        replies = exchange(msgs)  # may add records to a request (the coordinator's log head)
        # in site order, not arrival order: a float sum depends on its order, and the average
        # must not depend on which site answered first (a federated run equals --local)
        replies = sorted(replies, key=lambda r: names.get(int(r.metadata.src_node_id), ""))
        for m in msgs:  # measured as sent, after the exchange
            log.add(names[int(m.metadata.dst_node_id)], "received", FEDAVG_MSG_TYPE,
                    f"round-{rnd}", m.content)
        for r in (r for r in replies if not r.has_error()):
            log.add(names[int(r.metadata.src_node_id)], "sent", FEDAVG_MSG_TYPE,
                    f"round-{rnd}", r.content)
        with task_identity(SERVER_NODE):
            new, _ = strategy.aggregate_train(rnd, replies)
        arrays = new if new is not None else arrays
    return unpack_weights(layout, cast("ArrayRecord", arrays), "fedavg")[0]
