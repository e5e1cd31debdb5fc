"""Pipelined, parallel message rounds over a Flower ``Grid``.

:func:`run_windowed` sends the jobs ``0 .. n_jobs-1`` (proxy chunks) to every node, in order,
keeping at most ``window`` messages in flight per node, and pulls replies for all nodes at once
every ``poll`` seconds. A node refills its window the moment one of its replies arrives, so
every node works through its queue at its own pace: a slow site holds back only itself.

Why this is faster than one ``grid.send_and_receive`` per chunk (the lockstep round):
``send_and_receive`` polls the SuperLink every 3 s and waits for the slowest node,
and a SuperNode that finds no queued message sleeps 3 s before asking again. With a window of
2 or more the next chunk is already queued when a site finishes one.

Timeout rule (the same per-chunk rule as the lockstep round, counted per site): a node with
messages in flight that has sent no reply for ``timeout`` seconds (since its previous reply,
or since its first message) is dropped (``drop(node, why)``) and its other messages are
forgotten. ``accept`` returning False (invalid reply) drops the node as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.serverapp import Grid

POLL_S = 0.1  # seconds between pulls while nothing arrived
NO_REPLY = "no reply before the timeout"


@dataclass
class _State:
    """Bookkeeping of one windowed round: next job per node, flights, last progress."""

    n_jobs: int
    window: int
    next_job: dict[int, int]
    last: dict[int, float]
    flying: dict[str, tuple[int, int]] = field(default_factory=dict)  # msg id -> (node, job)

    def in_air(self, node: int) -> int:
        return sum(1 for n, _ in self.flying.values() if n == node)

    def due(self) -> list[tuple[int, int]]:
        """(node, job) pairs to send now: every live node's window topped up, in job order."""
        out = []
        for node in sorted(self.next_job):
            free = self.window - self.in_air(node)
            while free > 0 and self.next_job[node] < self.n_jobs:
                out.append((node, self.next_job[node]))
                self.next_job[node] += 1
                free -= 1
        return out

    def forget(self, node: int) -> None:
        """Stop sending to ``node``; its replies still in flight are ignored."""
        self.next_job.pop(node, None)
        self.flying = {k: v for k, v in self.flying.items() if v[0] != node}


def run_windowed(grid: Grid, nodes: list[int], n_jobs: int,
                 make: Callable[[int, int], Message],
                 accept: Callable[[int, int, Message], bool],
                 drop: Callable[[int, str], None], window: int, timeout: float,
                 poll: float = POLL_S, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
    """Run ``n_jobs`` jobs on each of ``nodes``, ``window`` in flight per node.

    ``make(node, job)`` builds the message (logged as sent by the caller); ``accept(node, job,
    reply)`` consumes one reply and says whether the node stays; ``drop(node, why)`` is called
    once for a node that timed out or could not be sent to."""
    st = _State(n_jobs, max(1, window), dict.fromkeys(nodes, 0), dict.fromkeys(nodes, clock()))
    while True:
        _push(grid, st, make, drop)
        if not st.flying:
            return
        got = _pull(grid, st, accept, clock)
        _expire(st, clock(), timeout, drop)
        if not got and st.flying:
            sleep(poll)


def _push(grid: Grid, st: _State, make: Callable[[int, int], Message],
          drop: Callable[[int, str], None]) -> None:
    """Send every due (node, job) in one ``push_messages`` call."""
    due = st.due()
    if not due:
        return
    ids = list(grid.push_messages([make(n, j) for n, j in due]))
    for (node, job), mid in zip(due, ids + [None] * (len(due) - len(ids)), strict=True):
        if mid:
            st.flying[mid] = (node, job)
        elif node in st.next_job:
            st.forget(node)
            drop(node, f"the SuperLink refused message {job}")


def _pull(grid: Grid, st: _State, accept: Callable[[int, int, Message], bool],
          clock: Callable[[], float]) -> int:
    """Pull replies of every message in flight; returns how many arrived. Replies are taken
    in the order the sites made them (``created_at``): the SuperLink returns a batch in no
    set order, and a site's replies carry its signed log heads, which must not go backwards."""
    got = 0
    pulled = grid.pull_messages(list(st.flying))
    for m in sorted(pulled, key=lambda m: getattr(m.metadata, "created_at", 0.0)):
        key = st.flying.pop(m.metadata.reply_to_message_id, None)
        if key is None:
            continue
        got += 1
        node, job = key
        st.last[node] = clock()
        if not accept(node, job, m):
            st.forget(node)
    return got


def _expire(st: _State, now: float, timeout: float, drop: Callable[[int, str], None]) -> None:
    """Drop nodes whose messages in flight got no reply for ``timeout`` seconds."""
    busy = {n for n, _ in st.flying.values()}
    for node in sorted(busy):
        if now - st.last[node] > timeout:
            st.forget(node)
            drop(node, NO_REPLY)


def send_receive(grid: Grid, msgs: list[Message], timeout: float, poll: float = POLL_S,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> list[tuple[int, Message]]:
    """``grid.send_and_receive`` polling every ``poll`` seconds instead of Flower's 3 s: push
    ``msgs`` at once, pull until every one has a reply or ``timeout`` seconds passed; the
    replies that arrived as ``(index in msgs, reply)`` (one without a reply is the caller's
    "no reply")."""
    ids = list(grid.push_messages(msgs))
    waiting = {mid: k for k, mid in enumerate(ids) if mid}
    replies: list[tuple[int, Message]] = []
    deadline = clock() + timeout
    while waiting and clock() < deadline:
        got = [m for m in grid.pull_messages(list(waiting))
               if m.metadata.reply_to_message_id in waiting]
        replies += [(waiting.pop(m.metadata.reply_to_message_id), m) for m in got]
        if waiting and not got:
            sleep(poll)
    return replies
