"""The coordinator side of the federated transport: a Flower ``ServerApp`` (Deployment Engine).

Run config (``flwr run ... --run-config``, parsed into :class:`coordinator.run_config.RunConfig`;
defaults only in ``deploy/flwr_app/pyproject.toml``): ``config-path`` (ExperimentConfig TOML/YAML),
``min-sites`` (fewest live sites to go on, 0 = the config's ``min_sites``), ``expected-sites``
(nodes to wait for, 0 = number of sites in the config), ``timeout`` (seconds per round),
``train`` (send ``train`` first), ``chunk-size`` (proxy slices per query message),
``query-window`` (query chunks in flight per site, 0 = lockstep), ``out``
(override the experiment's out folder, "" = keep), ``site-keys-dir`` (``<site>.pub`` Ed25519
keys: every reply's receipt must verify, see :mod:`coordinator.audit_trail`; "" = unverified).

Rounds: proxy set spilled to disk and the memory guard (issue 14) -> wait for nodes ->
``train`` (site names, val Dice) -> ``query.teacher_outputs`` per proxy chunk, pipelined:
several chunks in flight per site, all sites at once, each at its own pace
(:mod:`coordinator.fed_query`, :mod:`coordinator.query_pipeline`; every reply written at once
into the fp16 memmap cache, per site and proxy digest) -> students trained by the very engine of
``distill --local``, reading the cache per batch -> ``evaluate`` at every site ->
``federated_results.json`` / ``.md``.
A site whose ``train`` or ``query`` reply times out, carries an error or fails validation is
dropped with one log line. ``evaluate`` has a retry rule (:func:`eval_round`): a failed evaluate
is sent once more, and a site that fails it again has no score for that student but is never
dropped for it, so it still scores the later runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from pydantic import ConfigDict, Field

from common.data.plan import Plan
from common.io import atomic_write_json
from common.protocol import (
    EvalConfig,
    MsgType,
    TrainConfig,
    decode_eval_reply,
    decode_train_reply,
    encode_eval,
    encode_train,
)
from coordinator.audit_trail import CoordinatorTrail
from coordinator.distill.config import ExperimentConfig
from coordinator.distill.dataset import load_proxy_on_disk
from coordinator.distill.memory import guard_experiment
from coordinator.distill.proxy import canvas_note
from coordinator.distill.repeats import train_repeats
from coordinator.distill.student import DistillData, StudentRun
from coordinator.distill.teacher_check import check_teachers, plan_line
from coordinator.fed_query import Roster, fuse_sites, gather_targets, log, validate_replies
from coordinator.fed_query import exchange as _exchange
from coordinator.run_config import RunConfig

__all__ = ["EVAL_ATTEMPTS", "FedSettings", "app", "eval_round", "mean_dice", "run_federated"]
app = ServerApp()


class FedSettings(RunConfig):
    """The run config of one federated experiment (:class:`RunConfig`), plus the exchange
    trail that :func:`run_federated` sets once the out folder is known."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    trail: CoordinatorTrail | None = Field(default=None, exclude=True)


def plan_federated(cfg: ExperimentConfig, names: list[str]) -> list[StudentRun]:
    """Like ``plan_runs`` of ``--local`` but over the sites that actually answered."""
    runs = [StudentRun("student_only")] if cfg.runs.baseline else []
    if cfg.runs.single_teacher:
        runs += [StudentRun(f"single_{n}", [j]) for j, n in enumerate(names)]
    every = list(range(len(names)))
    return runs + [StudentRun(f"multi_{w.label}", every, w) for w in cfg.runs.weightings]


def wait_for_nodes(grid: Grid, expected: int, min_sites: int, timeout: float) -> list[int]:
    """Poll ``grid.get_node_ids()`` until ``expected`` nodes are connected (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    log(f"{len(nodes)} node(s) connected (expected {expected})")
    if len(nodes) < max(min_sites, 1):
        raise RuntimeError(f"only {len(nodes)} node(s) connected, need {min_sites}")
    return nodes


def train_round(grid: Grid, nodes: list[int], s: FedSettings, run_id: str) -> Roster:
    """``train`` every node; the roster maps node ids to the site names they report."""
    roster = Roster()
    content = {n: encode_train(TrainConfig(run_id=run_id)) for n in nodes}
    ok = validate_replies(_exchange(grid, content, MsgType.TRAIN, "train", s.timeout,
                                    s.trail), nodes, decode_train_reply, roster)
    for node, (site, rep) in ok.items():
        if site in roster.names.values():
            roster.drop(node, f"duplicate site name {site!r}")
            continue
        roster.names[node] = site
        roster.val_dice[site] = rep.val_dice
        val = "n/a" if rep.val_dice is None else f"{rep.val_dice:.4f}"
        log(f"{site}: teacher ready, val Dice {val} on {rep.case_count} cases; "
            f"plan {rep.plan_text()}")
    return roster


EVAL_ATTEMPTS = 2  # evaluate retry rule: one retry, and a failed evaluate never drops a site


def eval_round(grid: Grid, roster: Roster, run: str, state: dict[str, torch.Tensor],
               cfg: ExperimentConfig, s: FedSettings, run_id: str,
               plan: Plan | None = None) -> dict[str, dict]:
    """Send the student (and its preprocessing ``plan``: the proxy set's) to every live site;
    per-site metric summaries keyed by site name (:meth:`common.protocol.EvalReply.summary`:
    NaN for an undefined metric, with the reason).

    Retry rule: a site whose evaluate fails (timeout, error reply, invalid reply) is asked
    again, up to :data:`EVAL_ATTEMPTS` in all; if every attempt fails, this student has no
    score from it (``{"error": why}``) but the site stays in ``roster`` and scores later runs."""
    ec = EvalConfig(run_id=run_id, run_name=run, model_name=cfg.student.model,
                    size=cfg.student.size, plan_json=plan.model_dump_json() if plan else "")
    rd = encode_eval(ec, state)
    todo, out = list(roster.names), {}
    failed = Roster(dict(roster.names), verb="evaluate failed for")
    for attempt in range(EVAL_ATTEMPTS):
        group = f"eval-{run}" + (f"-retry{attempt}" if attempt else "")
        failed = Roster(dict(roster.names), verb="evaluate failed for")
        replies = _exchange(grid, dict.fromkeys(todo, rd), MsgType.EVALUATE, group, s.timeout,
                            s.trail)
        ok = validate_replies(replies, todo, decode_eval_reply, failed)
        out.update({site: rep.summary() for site, rep in ok.values()})
        todo = [n for n in todo if n in failed.dropped]
        if not todo:
            break
    for node in todo:
        log(f"{roster.names[node]}: no score for {run} after {EVAL_ATTEMPTS} attempts; the "
            "site stays in the roster (evaluate retry rule)")
        out[roster.names[node]] = {"error": failed.dropped[node]}
    return out


def mean_dice(sites: dict[str, dict]) -> float:
    """Mean of the sites' defined ``dice_mean`` (NaN when none is defined)."""
    vals = [float(v["dice_mean"]) for v in sites.values()
            if v.get("dice_mean") is not None and v["dice_mean"] == v["dice_mean"]]
    return sum(vals) / len(vals) if vals else float("nan")


# ----------------------------------------------------------------------------- experiment
def run_federated(grid: Grid, s: FedSettings, run_id: str) -> list[dict]:
    """The whole federated experiment; returns the result rows (also written to disk)."""
    from common.config import load_config

    cfg = load_config(s.config_path, ExperimentConfig).resolve_paths(s.config_path.parent)
    cfg = cfg.model_copy(update={"out": Path(s.out).resolve()}) if s.out else cfg
    min_sites = s.min_sites or cfg.min_sites
    keys = Path(s.site_keys_dir) if s.site_keys_dir else None
    s.trail = CoordinatorTrail(cfg.out, run_id, keys)
    log(f"exchange log: {s.trail.log.path}; receipts "
        + (f"verified against {keys}" if keys else "stored UNVERIFIED (no site-keys-dir)"))
    t0 = time.perf_counter()
    expected = s.expected_sites or len(cfg.sites)
    proxy = load_proxy_on_disk(cfg.proxy, cfg.student.size, cfg.proxy_label, cfg.out / "proxy",
                               fill=cfg.student.fills_canvas)
    guard_experiment(cfg, len(proxy), sites=expected,  # proxy and answers on disk (issue 14)
                     query=(s.chunk_size, s.query_window))
    nodes = wait_for_nodes(grid, expected, min_sites, s.timeout)
    roster = train_round(grid, nodes, s, run_id) if s.train else Roster()
    if not s.train:
        roster.names = {n: f"node{n}" for n in nodes}
    log(f"student plan: {plan_line(proxy.plan)}")
    if (note := canvas_note(proxy, cfg.kd.padding == "exclude")) is not None:
        log(f"WARNING {note}")
    names, targets = fuse_sites(gather_targets(grid, roster, proxy, cfg, s, run_id), min_sites)
    check_teachers(names, targets, proxy.masks, roster.val_dice, cfg.teacher_proxy_dice_floor)
    data = DistillData(proxy, targets, names, site_tests={})
    rows = []
    for run in plan_federated(cfg, names):
        log(f"run {run.name}")
        rows.append(train_and_score(grid, roster, run, data, cfg, s, run_id))
    from coordinator.fed_baselines import federated_baselines  # issue 15: costs, FedAvg row

    rows = federated_baselines(grid, roster, data, cfg, s, run_id, rows, eval_round)
    write_federated(rows, cfg, roster, time.perf_counter() - t0)
    from coordinator.export import export_best_multi

    export_best_multi(cfg.out, rows, cfg)
    return rows


def train_and_score(grid: Grid, roster: Roster, run: StudentRun, data: DistillData,
                    cfg: ExperimentConfig, s: FedSettings, run_id: str) -> dict:
    """Train ``run`` once per seed (``cfg.repeats``, resumable), have the sites score each
    student on their test data, and return the (mean over seeds) result row."""
    several = cfg.repeats > 1

    def score(row: dict, seed: int, sub: Path) -> dict:
        state = torch.load(sub / "last.pt", map_location="cpu", weights_only=False)["model"]
        name = f"{run.name}_seed{seed}" if several else run.name
        row["sites"] = eval_round(grid, roster, name, state, cfg, s, run_id, data.proxy.plan)
        row["mean_dice"] = mean_dice(row["sites"])
        row["checkpoint_dir"] = str(sub)
        return row

    return train_repeats(run, data, cfg, cfg.out / "runs" / run.name, score)


def write_federated(rows: list[dict], cfg: ExperimentConfig, roster: Roster,
                    seconds: float) -> None:
    """``federated_results.json`` and ``federated_results.md`` in the experiment folder."""
    from coordinator.distill.report import table_rows, to_markdown

    cfg.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.out / "federated_results.json", {
        "sites": sorted(roster.names.values()), "dropped": list(roster.dropped.values()),
        "seconds": seconds, "rows": rows})
    if rows and all(set(r["sites"]) == set(rows[0]["sites"]) and r["sites"] for r in rows):
        header, body = table_rows(rows)
        (cfg.out / "federated_results.md").write_text(to_markdown(header, body))
    log(f"results: {cfg.out / 'federated_results.json'} ({seconds:.1f} s)")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """ServerApp entry point."""
    from common.logs import ensure_logging

    ensure_logging()
    s = FedSettings.from_run_config(dict(context.run_config))
    run_federated(grid, s, str(context.run_id))
