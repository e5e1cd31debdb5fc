"""The coordinator side of the federated transport: a Flower ``ServerApp`` (Deployment Engine).

Run config (``flwr run ... --run-config``, parsed into :class:`coordinator.run_config.RunConfig`;
defaults only in ``deploy/flwr_app/pyproject.toml``): ``config-path`` (ExperimentConfig TOML/YAML),
``min-sites`` (fewest live sites to go on, 0 = the config's ``min_sites``), ``expected-sites``
(nodes to wait for, 0 = number of sites in the config), ``timeout`` (seconds per round),
``train`` (send ``train`` first), ``chunk-size`` (proxy slices per query message),
``query-window`` (query chunks in flight per site, 0 = lockstep), ``out``
(override the experiment's out folder, "" = keep), ``site-keys-dir`` (``<site>.pub`` Ed25519
keys: every reply's receipt must verify, see :mod:`coordinator.audit_trail`; "" = unverified).

Rounds: wait for nodes -> ``train`` (site names, val Dice) -> ``query.teacher_outputs`` per
proxy chunk, pipelined: several chunks in flight per site, all sites at once, each at its own
pace (:mod:`coordinator.query_pipeline`; cached per site and proxy digest) -> students
trained by the very engine of ``distill --local`` -> ``evaluate`` at every site ->
``federated_results.json`` / ``.md``.
A site whose ``train`` or ``query`` reply times out, carries an error or fails validation is
dropped with one log line. ``evaluate`` has a retry rule (:func:`eval_round`): a failed evaluate
is sent once more, and a site that fails it again has no score for that student but is never
dropped for it, so it still scores the later runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from pydantic import ConfigDict, Field

from common.data.plan import Plan
from common.io import atomic_write_json
from common.kd.targets import TeacherTargets
from common.protocol import (
    EvalConfig,
    MsgType,
    ProtocolError,
    QueryConfig,
    TrainConfig,
    decode_eval_reply,
    decode_teacher_reply,
    decode_train_reply,
    encode_eval,
    encode_query,
    encode_train,
)
from coordinator.audit_trail import CoordinatorTrail
from coordinator.distill.cache import TeacherCache
from coordinator.distill.config import ExperimentConfig
from coordinator.distill.identity import cache_key
from coordinator.distill.proxy import ProxySet, load_proxy
from coordinator.distill.repeats import train_repeats
from coordinator.distill.student import DistillData, StudentRun
from coordinator.distill.teacher_check import check_teachers, plan_line
from coordinator.query_pipeline import run_windowed
from coordinator.run_config import RunConfig

app = ServerApp()
T = TypeVar("T")
_log = logging.getLogger(__name__)


def log(msg: str) -> None:
    """One INFO line of the ServerApp (its output is streamed by ``flwr run --stream``)."""
    _log.info(msg)


class FedSettings(RunConfig):
    """The run config of one federated experiment (:class:`RunConfig`), plus the exchange
    trail that :func:`run_federated` sets once the out folder is known."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    trail: CoordinatorTrail | None = Field(default=None, exclude=True)


@dataclass
class Reply:
    """A node's answer as the pure logic sees it: content or an error text."""

    node_id: int
    content: RecordDict | None = None
    error: str = ""


@dataclass
class Roster:
    """Live sites: node id -> site name, and why others were dropped."""

    names: dict[int, str] = field(default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)
    val_dice: dict[str, float | None] = field(default_factory=dict)  # site -> its train reply's
    verb: str = "dropping"  # what the log line calls a removal

    def drop(self, node: int, why: str) -> None:
        """Remove ``node`` from the live set, logging one line."""
        label = self.names.pop(node, f"node {node}")
        self.dropped[node] = why
        log(f"{self.verb} {label}: {why}")


def validate_replies(replies: Iterable[Reply], expected: Iterable[int],
                     decode: Callable[[RecordDict, str], T], roster: Roster) -> dict[int, T]:
    """Decode each expected node's reply; drop (in ``roster``) nodes that fail or are silent."""
    got = {r.node_id: r for r in replies}
    ok: dict[int, T] = {}
    for node in expected:
        r = got.get(node)
        who = roster.names.get(node, f"node {node}")
        if r is None:
            roster.drop(node, "no reply before the timeout")
        elif r.content is None:
            roster.drop(node, f"error reply: {r.error}")
        else:
            try:
                ok[node] = decode(r.content, who)
            except ProtocolError as exc:
                roster.drop(node, f"invalid reply: {exc}")
    return ok


def fuse_sites(parts: dict[str, TeacherTargets], min_sites: int
               ) -> tuple[list[str], TeacherTargets]:
    """Sorted site names and their teachers stacked (J, N, ...); too few sites is an error."""
    if len(parts) < max(min_sites, 1):
        raise RuntimeError(f"only {len(parts)} site(s) left ({sorted(parts)}), "
                           f"need at least {min_sites}")
    names = sorted(parts)
    return names, TeacherTargets.stack([parts[n] for n in names])


def plan_federated(cfg: ExperimentConfig, names: list[str]) -> list[StudentRun]:
    """Like ``plan_runs`` of ``--local`` but over the sites that actually answered."""
    runs = [StudentRun("student_only")] if cfg.runs.baseline else []
    if cfg.runs.single_teacher:
        runs += [StudentRun(f"single_{n}", [j]) for j, n in enumerate(names)]
    every = list(range(len(names)))
    return runs + [StudentRun(f"multi_{w.label}", every, w) for w in cfg.runs.weightings]


def chunks(n: int, size: int) -> list[slice]:
    """Consecutive, balanced slices of at most ``size`` covering ``range(n)`` (no tiny last
    chunk: a site refuses queries below its policy's ``min_query_batch``)."""
    k = max(1, -(-n // max(size, 1)))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


# ----------------------------------------------------------------------------- transport
def _outgoing(node: int, content: RecordDict, mtype: str, group: str,
              trail: CoordinatorTrail | None) -> Message:
    """One request to ``node`` (logged as sent with a ``trail``, which may add records to it:
    a per-message copy of ``content``, whose records are shared, not copied)."""
    content = RecordDict(dict(content.items()))
    if trail is not None:
        trail.sent(node, mtype, content)
    return Message(content, dst_node_id=node, message_type=mtype, group_id=group)


def _incoming(m: Message, mtype: str, trail: CoordinatorTrail | None,
              node: int | None = None) -> Reply:
    """One reply as a :class:`Reply`; with a ``trail`` logged and its receipt checked.
    ``node``: the node the request went to (an error reply made by the SuperLink, e.g. "Node
    Unavailable", comes from the SuperLink's node id, not from the site's)."""
    node = m.metadata.src_node_id if node is None else node
    if m.has_error():
        reply = Reply(node, error=f"{m.error.code} {m.error.reason}".strip())
        if trail is not None:
            trail.error(node, mtype, reply.error)
        return reply
    content, why = (m.content, None) if trail is None else trail.received(node, mtype, m.content)
    return Reply(node, error=f"receipt rejected: {why}") if why else Reply(node, content)


def _exchange(grid: Grid, contents: dict[int, RecordDict], mtype: str, group: str,
              timeout: float, trail: CoordinatorTrail | None = None) -> list[Reply]:
    """Send, receive; with a ``trail`` log both ways and check every reply's receipt."""
    msgs = [_outgoing(n, c, mtype, group, trail) for n, c in contents.items()]
    return [_incoming(m, mtype, trail) for m in grid.send_and_receive(msgs, timeout=timeout)]


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
                                         s.trail), nodes,
                          decode_train_reply, roster)
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


@dataclass
class _QueryRound:
    """State of one query round: the chunks' requests (encoded once for every site, a few
    recent ones kept) and each live node's validated answers by chunk index."""

    roster: Roster
    proxy: ProxySet
    cfg: ExperimentConfig
    s: FedSettings
    run_id: str
    parts_of: list[slice]
    parts: dict[int, dict[int, TeacherTargets]] = field(default_factory=dict)
    made: dict[int, RecordDict] = field(default_factory=dict)

    def content(self, i: int) -> RecordDict:
        """The ``query.teacher_outputs`` request of chunk ``i`` (the same for every site)."""
        if i not in self.made:
            sl, p, cfg = self.parts_of[i], self.proxy, self.cfg
            qc = QueryConfig(run_id=self.run_id, chunk=i, n_chunks=len(self.parts_of),
                             size=cfg.student.size, at_form=cfg.kd.at_form, p=cfg.kd.at_p,
                             slice_hashes=p.hashes[sl],
                             plan_json=p.plan.model_dump_json() if p.plan else "",
                             batch_size=cfg.student.teacher_batch_size,
                             temperature=cfg.kd.temperature)
            self.made[i] = encode_query(p.images[sl], p.masks[sl], qc)
            while len(self.made) > 2 * self.s.query_window + 2:
                self.made.pop(min(self.made))
        return self.made[i]

    def take(self, i: int, replies: list[Reply], nodes: list[int]) -> None:
        """Validate chunk ``i``'s replies of ``nodes``; drop the silent and the invalid."""
        n, size = self.parts_of[i].stop - self.parts_of[i].start, self.cfg.student.size

        def dec(c: RecordDict, who: str) -> tuple[str, TeacherTargets]:
            return decode_teacher_reply(c, n, size, who, chunk=i)

        names = self.roster.names
        for node, (site, t) in validate_replies(replies, nodes, dec, self.roster).items():
            if site != names[node]:
                self.roster.drop(node, f"answered as {site!r}, registered as {names[node]!r}")
            else:
                self.parts.setdefault(node, {})[i] = t

    def take_one(self, node: int, i: int, m: Message) -> bool:
        """One pipelined reply of ``node`` to chunk ``i``; whether the node is still live."""
        self.take(i, [_incoming(m, MsgType.QUERY, self.s.trail, node)], [node])
        return node in self.roster.names

    def send(self, node: int, i: int) -> Message:
        """Chunk ``i``'s request to ``node`` (logged as sent)."""
        return _outgoing(node, self.content(i), MsgType.QUERY, f"query-{i}", self.s.trail)

    def lockstep(self, grid: Grid) -> None:
        """The round before issue 14: one ``send_and_receive`` per chunk, all sites waiting
        for the slowest (``query-window = 0``; kept for ``bench/bench_query.py``)."""
        for i in range(len(self.parts_of)):
            nodes = list(self.roster.names)
            self.take(i, _exchange(grid, dict.fromkeys(nodes, self.content(i)), MsgType.QUERY,
                                   f"query-{i}", self.s.timeout, self.s.trail), nodes)

    def result(self) -> dict[str, TeacherTargets]:
        """Each live site's answers concatenated in chunk order."""
        return {self.roster.names[n]: TeacherTargets.concat([p[i] for i in sorted(p)])
                for n, p in self.parts.items() if n in self.roster.names}


def query_round(grid: Grid, roster: Roster, proxy: ProxySet, cfg: ExperimentConfig,
                s: FedSettings, run_id: str) -> dict[str, TeacherTargets]:
    """Every live node's teacher outputs on all proxy chunks, validated and concatenated.

    Pipelined (:func:`coordinator.query_pipeline.run_windowed`): ``s.query_window`` chunks in
    flight per site, all sites at once, each at its own pace; a site is dropped after
    ``s.timeout`` seconds without a reply, or on an invalid reply. ``query-window = 0`` is
    the lockstep round (:meth:`_QueryRound.lockstep`)."""
    if cfg.kd.feature_taps != "emkd":  # the query protocol carries the EMKD maps only
        raise ValueError("federated runs support [kd] feature_taps = 'emkd' only (issue 18)")
    q = _QueryRound(roster, proxy, cfg, s, run_id, chunks(len(proxy), s.chunk_size))
    t0 = time.perf_counter()
    if s.query_window > 0:
        run_windowed(grid, list(roster.names), len(q.parts_of), q.send, q.take_one,
                     roster.drop, s.query_window, s.timeout)
    else:
        q.lockstep(grid)
    log(f"query round: {len(q.parts_of)} chunk(s) x {len(q.parts)} site(s), window "
        f"{s.query_window}: {time.perf_counter() - t0:.2f} s")
    return q.result()


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
def fed_cache_key(proxy: ProxySet, cfg: ExperimentConfig, val_dice: float | None) -> str:
    """Cache key of a site's federated answers: the proxy set, the attention settings, the
    answer's form (served in the teacher's own plan, issue 17) and what the site reported of its
    teacher (its validation Dice: a federated coordinator never sees the weights, so a retrained
    teacher is recognised by its reported score, not by a digest)."""
    return cache_key(proxy.digest, f"federated|bridged|val={val_dice}", cfg.kd.at_form,
                     cfg.kd.at_p)


def gather_targets(grid: Grid, roster: Roster, proxy: ProxySet, cfg: ExperimentConfig,
                   s: FedSettings, run_id: str) -> dict[str, TeacherTargets]:
    """Cached targets where available, a query round for the rest; cache what comes back."""
    cache = TeacherCache(cfg.out / "teacher_cache")
    keys = {site: fed_cache_key(proxy, cfg, roster.val_dice.get(site))
            for site in roster.names.values()}
    have = {site: cache.get(site, keys[site]) for site in roster.names.values()}
    cached = {site: t for site, t in have.items() if t is not None}
    log(f"teacher outputs cached for {sorted(cached)}")
    todo = Roster({n: site for n, site in roster.names.items() if site not in cached})
    fresh = query_round(grid, todo, proxy, cfg, s, run_id) if todo.names else {}
    for node, why in todo.dropped.items():
        roster.drop(node, why)
    for site, t in fresh.items():
        cache.put(site, keys[site], t)
        log(f"{site}: teacher outputs for {len(proxy)} proxy slices validated and cached")
    return {**cached, **fresh}


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
    nodes = wait_for_nodes(grid, s.expected_sites or len(cfg.sites), min_sites, s.timeout)
    roster = train_round(grid, nodes, s, run_id) if s.train else Roster()
    if not s.train:
        roster.names = {n: f"node{n}" for n in nodes}
    proxy = load_proxy(cfg.proxy, cfg.student.size, cfg.proxy_label)
    log(f"student plan: {plan_line(proxy.plan)}")
    names, targets = fuse_sites(gather_targets(grid, roster, proxy, cfg, s, run_id), min_sites)
    check_teachers(names, targets, proxy.masks, roster.val_dice, cfg.teacher_proxy_dice_floor)
    data = DistillData(proxy, targets, names, site_tests={})
    rows = []
    for run in plan_federated(cfg, names):
        log(f"run {run.name}")
        rows.append(train_and_score(grid, roster, run, data, cfg, s, run_id))
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
