"""The federated query round and its on-disk answers: message validation, the
transport helpers of the ServerApp, the pipelined ``query.teacher_outputs`` round and the teacher
cache that it fills.

Flat in memory: every validated reply chunk is written at once, as the wire carried it (fp16
arrays stay fp16), into its site's memmap cache (:class:`coordinator.distill.cache.SiteWriter`,
at the chunk's slice offset, in whatever order replies arrive); a site's folder is renamed
into place only when all its chunks are in, and a site dropped mid-round leaves no cache (its
temporary folder is removed). The students then read
:class:`~coordinator.distill.cache.CachedTargets`, as ``distill --local`` does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from common.kd.targets import TeacherTargets
from common.protocol import (
    MsgType,
    ProtocolError,
    QueryConfig,
    decode_teacher_arrays,
    encode_query,
)
from coordinator.audit_trail import CoordinatorTrail
from coordinator.distill.cache import CachedTargets, SiteWriter, TeacherCache, read_rows
from coordinator.distill.config import ExperimentConfig
from coordinator.distill.identity import cache_key
from coordinator.distill.proxy import ProxySet
from coordinator.query_pipeline import run_windowed, send_receive

T = TypeVar("T")
PROGRESS_S = 30.0  # at most this many seconds between progress lines of the query round
TT = TypeVar("TT", TeacherTargets, CachedTargets)
_log = logging.getLogger(__name__)


def log(msg: str) -> None:
    """One INFO line (streamed by ``flwr run --stream`` with the ServerApp's)."""
    _log.info(msg)


class QuerySettings(Protocol):
    """What the query round reads of the ServerApp's settings (``server_app.FedSettings``)."""

    @property
    def chunk_size(self) -> int: ...
    @property
    def query_window(self) -> int: ...
    @property
    def timeout(self) -> float: ...
    @property
    def trail(self) -> CoordinatorTrail | None: ...


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


def fuse_sites(parts: Mapping[str, TT], min_sites: int) -> tuple[list[str], TT]:
    """Sorted site names and their teachers stacked (J, N, ...), in memory or on disk (as the
    parts); too few sites is an error."""
    if len(parts) < max(min_sites, 1):
        raise RuntimeError(f"only {len(parts)} site(s) left ({sorted(parts)}), "
                           f"need at least {min_sites}")
    names = sorted(parts)
    seq = [parts[n] for n in names]
    if isinstance(seq[0], CachedTargets):
        return names, CachedTargets.stack(seq)  # type: ignore[arg-type,return-value]
    return names, TeacherTargets.stack(seq)  # type: ignore[arg-type,return-value]


def chunks(n: int, size: int) -> list[slice]:
    """Consecutive, balanced slices of at most ``size`` covering ``range(n)`` (no tiny last
    chunk: a site refuses queries below its policy's ``min_query_batch``)."""
    k = max(1, -(-n // max(size, 1)))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


# ----------------------------------------------------------------------------- transport
def outgoing(node: int, content: RecordDict, mtype: str, group: str,
              trail: CoordinatorTrail | None) -> Message:
    """One request to ``node`` (logged as sent with a ``trail``, which may add records to it:
    a per-message copy of ``content``, whose records are shared, not copied)."""
    content = RecordDict(dict(content.items()))
    if trail is not None:
        trail.sent(node, mtype, content)
    return Message(content, dst_node_id=node, message_type=mtype, group_id=group)


def incoming(m: Message, mtype: str, trail: CoordinatorTrail | None,
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


def exchange(grid: Grid, contents: dict[int, RecordDict], mtype: str, group: str,
              timeout: float, trail: CoordinatorTrail | None = None) -> list[Reply]:
    """Send, receive (:func:`~coordinator.query_pipeline.send_receive`, 0.1 s polls); with a
    ``trail`` log both ways and check every reply's receipt."""
    nodes = list(contents)
    msgs = [outgoing(n, contents[n], mtype, group, trail) for n in nodes]
    return [incoming(m, mtype, trail, nodes[k]) for k, m in send_receive(grid, msgs, timeout)]


@dataclass
class _QueryRound:
    """State of one query round: the chunks' requests (encoded once for every site, a few
    recent ones kept; proxy rows read from disk per chunk) and the store that each live node's
    validated answers are written to as they arrive."""

    roster: Roster
    proxy: ProxySet
    cfg: ExperimentConfig
    s: QuerySettings
    run_id: str
    parts_of: list[slice]
    store: AnswerStore
    made: dict[int, RecordDict] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)  # site -> chunks answered
    t0: float = field(default_factory=time.monotonic)
    last_log: float = field(default_factory=time.monotonic)

    def progress(self, every: float = PROGRESS_S) -> None:
        """One line of per-site progress (chunks answered / total, ETA) at most every
        ``every`` seconds, and when every live site is done."""
        n, now = len(self.parts_of), time.monotonic()
        live = list(self.roster.names.values())
        finished = all(self.done.get(site, 0) >= n for site in live)
        if not finished and now - self.last_log < every:
            return
        self.last_log = now
        total = sum(self.done.get(site, 0) for site in live)
        rate = total / max(now - self.t0, 1e-9)
        eta = (n * len(live) - total) / rate if rate > 0 else float("nan")
        log("query round: " + ", ".join(f"{site} {self.done.get(site, 0)}/{n}" for site in live)
            + f" chunks answered ({now - self.t0:.0f} s, ETA {eta:.0f} s)")

    def content(self, i: int) -> RecordDict:
        """The ``query.teacher_outputs`` request of chunk ``i`` (the same for every site)."""
        if i not in self.made:
            sl, p, cfg = self.parts_of[i], self.proxy, self.cfg
            qc = QueryConfig(run_id=self.run_id, chunk=i, n_chunks=len(self.parts_of),
                             size=cfg.student.size, at_form=cfg.kd.at_form, p=cfg.kd.at_p,
                             slice_hashes=p.hashes[sl],
                             plan_json=p.plan.model_dump_json() if p.plan else "",
                             batch_size=cfg.student.teacher_batch_size,
                             temperature=cfg.kd.temperature,
                             whole_field=cfg.kd.teacher_field == "whole")
            self.made[i] = encode_query(read_rows(p.images, sl.start, sl.stop),
                                        read_rows(p.masks, sl.start, sl.stop), qc)
            while len(self.made) > 2 * self.s.query_window + 2:
                self.made.pop(min(self.made))
        return self.made[i]

    def take(self, i: int, replies: list[Reply], nodes: list[int]) -> None:
        """Validate chunk ``i``'s replies of ``nodes``; drop the silent and the invalid."""
        n, size = self.parts_of[i].stop - self.parts_of[i].start, self.cfg.student.size

        def dec(c: RecordDict, who: str) -> tuple[str, dict[str, np.ndarray]]:
            return decode_teacher_arrays(c, n, size, who, chunk=i)

        names = self.roster.names
        for node, (site, t) in validate_replies(replies, nodes, dec, self.roster).items():
            if site != names[node]:
                self.roster.drop(node, f"answered as {site!r}, registered as {names[node]!r}")
            else:
                self.store.add(site, self.parts_of[i].start, t)
                self.done[site] = self.done.get(site, 0) + 1
        self.progress()

    def take_one(self, node: int, i: int, m: Message) -> bool:
        """One pipelined reply of ``node`` to chunk ``i``; whether the node is still live."""
        self.take(i, [incoming(m, MsgType.QUERY, self.s.trail, node)], [node])
        return node in self.roster.names

    def send(self, node: int, i: int) -> Message:
        """Chunk ``i``'s request to ``node`` (logged as sent)."""
        return outgoing(node, self.content(i), MsgType.QUERY, f"query-{i}", self.s.trail)

    def lockstep(self, grid: Grid) -> None:
        """The lockstep round: one ``send_and_receive`` per chunk, all sites waiting
        for the slowest (``query-window = 0``; kept for ``bench/bench_query.py``)."""
        for i in range(len(self.parts_of)):
            nodes = list(self.roster.names)
            self.take(i, exchange(grid, dict.fromkeys(nodes, self.content(i)), MsgType.QUERY,
                                   f"query-{i}", self.s.timeout, self.s.trail), nodes)


def query_round(grid: Grid, roster: Roster, proxy: ProxySet, cfg: ExperimentConfig,
                s: QuerySettings, run_id: str, store: AnswerStore) -> dict[str, CachedTargets]:
    """Every live node's teacher outputs on all proxy chunks, validated and written chunk by
    chunk into ``store``; the complete sites' caches, read lazily (J = 1 each).

    Pipelined (:func:`coordinator.query_pipeline.run_windowed`): ``s.query_window`` chunks in
    flight per site, all sites at once, each at its own pace; a site is dropped after
    ``s.timeout`` seconds without a reply, or on an invalid reply. ``query-window = 0`` is
    the lockstep round (:meth:`_QueryRound.lockstep`)."""
    if cfg.kd.feature_taps != "emkd":  # the query protocol carries the EMKD maps only
        raise ValueError("federated runs support [kd] feature_taps = 'emkd' only")
    q = _QueryRound(roster, proxy, cfg, s, run_id, chunks(len(proxy), s.chunk_size), store)
    t0 = time.perf_counter()
    try:
        if s.query_window > 0:
            run_windowed(grid, list(roster.names), len(q.parts_of), q.send, q.take_one,
                         roster.drop, s.query_window, s.timeout)
        else:
            q.lockstep(grid)
    except BaseException:
        store.abort()
        raise
    log(f"query round: {len(q.parts_of)} chunk(s) x {len(store.writers)} site(s), window "
        f"{s.query_window}: {time.perf_counter() - t0:.2f} s")
    return store.finish(roster.names.values())


# ----------------------------------------------------------------------------- cache
class AnswerStore:
    """The query round's answers on disk: each site's chunks go straight into its teacher
    cache folder (``cache``, key ``keys[site]``, ``n`` proxy slices) as they arrive."""

    def __init__(self, cache: TeacherCache, keys: Mapping[str, str], n: int) -> None:
        self.cache, self.keys, self.n = cache, keys, n
        self.writers: dict[str, SiteWriter] = {}

    def add(self, site: str, start: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Slices ``start:start+B`` of ``site``'s answers: its decoded reply arrays
        ``{field: (B, ...)}`` (``common.protocol.decode_teacher_arrays``), written as they are."""
        if site not in self.writers:
            self.writers[site] = self.cache.writer(site, self.keys[site], self.n)
        self.writers[site].put(start, arrays)

    def finish(self, live: Iterable[str]) -> dict[str, CachedTargets]:
        """Commit the ``live`` sites' caches (renamed into place), remove the others' (dropped
        sites leave no half cache); the committed ones opened lazily."""
        keep = set(live)
        for site in [x for x in self.writers if x not in keep]:
            self.writers.pop(site).abort()
        out = {}
        for site, w in sorted(self.writers.items()):
            w.commit()
            t = self.cache.open(site, self.keys[site])
            assert t is not None
            out[site] = t
        return out

    def abort(self) -> None:
        """Remove every site's partial cache (the round failed)."""
        for w in self.writers.values():
            w.abort()
        self.writers.clear()


def fed_cache_key(proxy: ProxySet, cfg: ExperimentConfig, val_dice: float | None) -> str:
    """Cache key of a site's federated answers: the proxy set, the attention settings, the
    answer's form (served in the teacher's own plan) and what the site reported of its
    teacher (its validation Dice: a federated coordinator never sees the weights, so a retrained
    teacher is recognised by its reported score, not by a digest)."""
    form = "bridged" if cfg.kd.teacher_field == "centre" else "bridged+whole"
    return cache_key(proxy.digest, f"federated|{form}|val={val_dice}", cfg.kd.at_form,
                     cfg.kd.at_p)


def gather_targets(grid: Grid, roster: Roster, proxy: ProxySet, cfg: ExperimentConfig,
                   s: QuerySettings, run_id: str) -> dict[str, CachedTargets]:
    """Cached targets where available, a query round for the rest, whose replies are written
    into the cache as they arrive; all read lazily from disk (J = 1 each)."""
    cache = TeacherCache(cfg.out / "teacher_cache")
    keys = {site: fed_cache_key(proxy, cfg, roster.val_dice.get(site))
            for site in roster.names.values()}
    have = {site: cache.open(site, keys[site]) for site in roster.names.values()}
    cached = {site: t for site, t in have.items() if t is not None}
    log(f"teacher outputs cached for {sorted(cached)}")
    todo = Roster({n: site for n, site in roster.names.items() if site not in cached})
    store = AnswerStore(cache, keys, len(proxy))
    fresh = query_round(grid, todo, proxy, cfg, s, run_id, store) if todo.names else {}
    for node, why in todo.dropped.items():
        roster.drop(node, why)
    for site in fresh:
        log(f"{site}: teacher outputs for {len(proxy)} proxy slices validated and cached")
    return {**cached, **fresh}


