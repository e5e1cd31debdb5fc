"""Peer baselines in the federated run: the FedAvg, FedProx and FedBN rows over the Deployment
Engine.

:func:`federated_baselines` is what :meth:`coordinator.fed_sites.GridSites.peer_rows` calls after
the MT-KD student rows. With ``[runs.fedavg]`` in the experiment config it runs ``rounds``
rounds of Flower's own ``FedAvg`` (:func:`coordinator.baselines.fedavg.run_fedavg`) over the
real Grid: each live site gets a ``query.fedavg_train`` message (global weights + config) and,
if its egress policy allows weight release, answers with its updated weights. A site that
refuses (default policy) or fails comes back as an error reply: Flower's FedAvg leaves it out
of the average, the run goes on, and the row reports it (``fedavg_refused``: site -> reason).
The final global model is scored exactly like the students: the ``evaluate`` round
(:func:`coordinator.fed_sites.eval_round`) on every live site's held-out test split, native
resolution, once per seed (``repeats``). ``[runs.fedprox]`` (Flower's ``FedProx``) and
``[runs.fedbn]`` (Flower's ``FedAvg`` over all but the BatchNorm layers) make their rows the
same way, each in ``runs/<row>``; a FedBN row is scored with each site's own BatchNorm (the
``evaluate`` request names the run's seed, ``EvalConfig.local_bn``; a site that trained no
round of it has no score for the row).

Cost columns (``cost`` of each row, :func:`coordinator.baselines.costs.cost_summary`):
FedAvg's are the serialized payloads of the very messages sent to and received from the sites
(requests with the coordinator's log head, replies with the site's receipt), logged per message
in ``runs/fedavg[/seed<s>]/payloads.jsonl``; the first seed's run is the row's cost. The
MT-KD rows' bytes are the ``query.teacher_outputs`` exchange rebuilt from the validated teacher
outputs (requests as sent, replies re-encoded with the default fp16 codec, receipts left out),
as ``--local`` does. The cost table is in ``results.md`` and ``costs.csv``, as for ``--local``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from common.fedbn import without_bn
from common.io import atomic_write_json
from common.training import seed_everything
from coordinator.baselines.costs import PayloadLog, cost_summary
from coordinator.baselines.fedavg import (
    FEDAVG_MSG_TYPE,
    Exchange,
    fedavg_config,
    peer_label,
    peer_left,
    peer_specs,
    run_fedavg,
)
from coordinator.baselines.fedbn_scores import fedbn_note
from coordinator.distill.config import ExperimentConfig, FedAvgSpec, FedBNSpec
from coordinator.distill.repeats import mean_row, seed_folders
from coordinator.distill.results_file import ResultRow
from coordinator.distill.student import DistillData, _model, mean_dice
from coordinator.query_pipeline import send_receive

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.serverapp import Grid

    from coordinator.fed_query import QuerySettings as FedSettings
    from coordinator.fed_query import Roster

_log = logging.getLogger(__name__)
WHERE = "federated: message payloads (FedAvg measured; MT-KD query rebuilt, fp16)"
#: :func:`coordinator.fed_sites.eval_round` (passed in: that module imports this one):
#: ``(grid, roster, run name, state_dict, cfg, settings, run_id, plan) -> (summaries, cases)``.
EvalRound = Callable[..., tuple[dict[str, dict], dict[str, dict]]]


def federated_baselines(grid: Grid, roster: Roster, data: DistillData, cfg: ExperimentConfig,
                        s: FedSettings, run_id: str, rows: list[ResultRow],
                        score: EvalRound) -> list[ResultRow]:
    """``rows`` with a ``cost`` on every student row, then the FedAvg, FedProx and FedBN rows
    the config enables (``[runs.fedavg]`` ...; none when no site released weights), scored by
    ``score`` (the ServerApp's ``eval_round``); cost tables written to ``cfg.out``."""
    out: list[ResultRow] = [{**r, "cost": student_cost(r, cfg, data, s.chunk_size)} for r in rows]
    for run, spec in peer_specs(cfg):
        out += fedavg_rows(grid, roster, data, cfg, s, run_id, score, run, spec)
    return out


def student_cost(row: ResultRow, cfg: ExperimentConfig, data: DistillData, chunk_size: int
                 ) -> dict[str, Any]:
    """An MT-KD row's cost: the query exchange with its teachers' sites, ``chunk_size``
    proxy slices per message (the run config's); ``nothing`` for the no-KD student."""
    from coordinator.baselines.rows import student_cost as local_cost

    runs = cfg.runs.model_copy(update={"query_chunk_size": chunk_size})
    return local_cost(row, cfg.model_copy(update={"runs": runs}), data, where=WHERE)


def fedavg_rows(grid: Grid, roster: Roster, data: DistillData, cfg: ExperimentConfig,
                s: FedSettings, run_id: str, score: EvalRound, run: str = "fedavg",
                spec: FedAvgSpec | None = None) -> list[ResultRow]:
    """The peer row ``run`` (``spec``, default ``[runs.fedavg]``; mean over seeds), or ``[]``
    when no site ever released weights."""
    spec = spec or cfg.runs.fedavg
    assert spec is not None
    _log.info("run %s: %s over %s (weights leave the sites that allow it)", run,
              peer_label(spec), sorted(roster.names.values()))
    folder, t0 = cfg.out / "runs" / run, time.perf_counter()
    plan = seed_folders(folder, cfg)
    done = []
    for seed, sub in plan:
        res, refused = fedavg_seed(grid, roster, data, cfg, s, run_id, seed, sub, score, run,
                                   spec)
        if res is None:
            _log.info("%s: no site released weights (%s); no %s row", run, refused, run)
            return []
        done.append(res)
    row = done[0] if len(done) == 1 else mean_row(done, [sd for sd, _ in plan], folder)
    row["weighting"] = peer_label(spec)
    row["fedavg_refused"] = done[0]["fedavg_refused"]
    row["wall_seconds"] = time.perf_counter() - t0
    plog = PayloadLog.read(plan[0][1] / "payloads.jsonl")  # one training run (first seed)
    row["cost"] = cost_summary(plog, sorted(roster.names.values()), peer_left(spec),
                               float(row.get("train_seconds", 0.0)), WHERE)
    return [row]


def fedavg_seed(grid: Grid, roster: Roster, data: DistillData, cfg: ExperimentConfig,
                s: FedSettings, run_id: str, seed: int, out: Path, score: EvalRound,
                run: str = "fedavg", spec: FedAvgSpec | None = None
                ) -> tuple[ResultRow | None, dict[str, str]]:
    """One run of the peer ``run`` (``spec``) with ``seed`` over the live sites, scored by the
    ``evaluate`` round (FedBN: each site with its own BatchNorm); writes ``payloads.jsonl`` and
    ``result.json``. ``(row, refused: site -> reason)``, the row ``None`` when no site
    released weights (nothing to score)."""
    spec = spec or cfg.runs.fedavg
    assert spec is not None
    local_bn = isinstance(spec, FedBNSpec)
    seed_everything(seed)
    init = {k: v.detach().cpu() for k, v in _model(cfg, torch.device("cpu")).state_dict().items()}
    plan = data.proxy.plan
    plog, refused, t0 = PayloadLog(), dict[str, str](), time.perf_counter()
    state = run_fedavg(trail_exchange(grid, roster, s, refused), dict(roster.names),
                       without_bn(init, cfg.student.model) if local_bn else init, spec,
                       fedavg_config(cfg, plan.model_dump_json() if plan else "", seed, run_id,
                                     spec), plog, desc=f"[distill] {run} seed {seed}: rounds")
    out.mkdir(parents=True, exist_ok=True)
    plog.write(out / "payloads.jsonl")
    if not any(e.direction == "sent" for e in plog.entries):
        return None, refused
    name = f"{run}_seed{seed}" if cfg.repeats > 1 else run
    bn = {"local_bn": seed} if local_bn else {}
    sites, cases = score(grid, roster, name, state, cfg, s, run_id, plan, **bn)
    row: dict[str, Any] = {
        "run": run, "teachers": [], "weighting": None, "sites": sites, "seed": seed,
        "cases": cases,
        "mean_dice": mean_dice(sites), "train_seconds": time.perf_counter() - t0,
        "fedavg_refused": refused, "checkpoint_dir": str(out), **fedbn_note(local_bn)}
    torch.save({"model": state, **fedbn_note(local_bn)}, out / "last.pt")
    atomic_write_json(out / "result.json", row)
    return cast(ResultRow, row), refused


def trail_exchange(grid: Grid, roster: Roster, s: FedSettings, refused: dict[str, str]
                   ) -> Exchange:
    """Delivery over the real Grid with the run's exchange trail: every request is logged
    (and carries the coordinator's log head), every reply's receipt is checked (a rejected
    one becomes an error reply); error replies are noted in ``refused`` (site -> reason)."""
    def exchange(msgs: list[Message]) -> list[Message]:
        from flwr.app import RecordDict

        for m in msgs:  # a per-message copy: Flower's FedAvg shares one payload
            m.content = RecordDict(dict(m.content.items()))
            if s.trail is not None:
                s.trail.sent(int(m.metadata.dst_node_id), FEDAVG_MSG_TYPE, m.content)
        sent = {int(m.metadata.dst_node_id): m for m in msgs}
        replies = [m for _, m in send_receive(grid, msgs, s.timeout)]
        got = [_checked(r, sent, s, roster, refused) for r in replies]
        for node in set(sent) - {int(r.metadata.src_node_id) for r in replies}:
            _refusal(roster, node, "no reply before the timeout", refused)
        return got
    return exchange


def _checked(reply: Message, sent: dict[int, Message], s: FedSettings, roster: Roster,
             refused: dict[str, str]) -> Message:
    """``reply`` as FedAvg sees it: unchanged when accepted, else an error reply."""
    from flwr.app import Error, Message

    node = int(reply.metadata.src_node_id)
    if reply.has_error():
        why = f"error reply: {reply.error.code} {reply.error.reason}".strip()
        if s.trail is not None:
            s.trail.error(node, FEDAVG_MSG_TYPE, why)
        _refusal(roster, node, why, refused)
        return reply
    problem = s.trail.received(node, FEDAVG_MSG_TYPE, reply.content)[1] if s.trail else None
    if problem is None:
        return reply
    _refusal(roster, node, f"receipt rejected: {problem}", refused)
    return Message(Error(code=0, reason=f"receipt rejected: {problem}"),
                   reply_to=sent.get(node, reply))


def _refusal(roster: Roster, node: int, why: str, refused: dict[str, str]) -> None:
    """Note (and log) that ``node`` gave no weights this round; it stays in the roster."""
    site = roster.names.get(node, f"node {node}")
    refused[site] = why
    _log.info("%s: no FedAvg update (%s); left out of the average, still scores", site, why)
