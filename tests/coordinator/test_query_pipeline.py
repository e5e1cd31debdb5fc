"""pipelined, parallel query rounds (:mod:`coordinator.query_pipeline`).

A fake Grid with a simulated clock: each node answers its queued messages one at a time (as a
SuperNode does), ``service[node]`` seconds each (None: never). Times are hand-computable."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from coordinator.query_pipeline import NO_REPLY, run_windowed
from tests._helpers import random_targets


class FakeGrid:
    """Nodes serve their queues in order; ``answer(node, msg)`` is a reply's content."""

    def __init__(self, service: dict[int, float | None], answer: Any = None,
                 auto: bool = False) -> None:
        self.service, self.answer, self.now = service, answer or (lambda n, m: "ok"), 0.0
        self.auto = auto  # advance 0.5 simulated s per empty pull (real clock and sleep)
        self.queue: dict[int, list[tuple[str, Any]]] = {n: [] for n in service}
        self.busy: dict[int, tuple[str, Any, float]] = {}
        self.ready: dict[str, Any] = {}
        self.pushed: list[list[tuple[int, str]]] = []  # per push call: (node, group)
        self.in_air: dict[int, int] = dict.fromkeys(service, 0)
        self.max_in_air: dict[int, int] = dict.fromkeys(service, 0)
        self.count = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        self.now += dt

    def push_messages(self, msgs: list[Any]) -> list[str]:
        ids = []
        for m in msgs:
            node, self.count = m.metadata.dst_node_id, self.count + 1
            ids.append(f"m{self.count}")
            self.queue[node].append((ids[-1], m))
            self.in_air[node] += 1
            self.max_in_air[node] = max(self.max_in_air[node], self.in_air[node])
        self.pushed.append([(m.metadata.dst_node_id, m.metadata.group_id) for m in msgs])
        self._serve()
        return ids

    def _serve(self) -> None:
        for node, q in self.queue.items():
            if self.service[node] is None:
                continue
            while True:
                if node in self.busy and self.busy[node][2] <= self.now + 1e-9:
                    mid, m, done = self.busy.pop(node)
                    self.ready[mid] = _reply(node, mid, self.answer(node, m))
                    self.in_air[node] -= 1
                    start = done
                elif node in self.busy or not q:
                    break
                else:
                    start = self.now
                if node not in self.busy and q:
                    mid, m = q.pop(0)
                    self.busy[node] = (mid, m, start + float(self.service[node]))  # type: ignore[arg-type]

    def pull_messages(self, ids: list[str]) -> list[Any]:
        self._serve()
        out = [self.ready.pop(i) for i in list(ids) if i in self.ready]
        if self.auto and not out:
            self.now += 0.5
        return out

    def send_and_receive(self, msgs: list[Any], timeout: float) -> list[Any]:
        ids = self.push_messages(msgs)
        self.now += max(s for s in self.service.values() if s is not None) * 1.001
        return self.pull_messages(ids)


def _reply(node: int, mid: str, content: Any) -> Any:
    if content == "UNAVAILABLE":  # what the SuperLink answers for a node that died
        meta = SimpleNamespace(src_node_id=1, reply_to_message_id=mid)
        return SimpleNamespace(metadata=meta, has_error=lambda: True, error=SimpleNamespace(
            code=5, reason="Error: Node Unavailable"))
    meta = SimpleNamespace(src_node_id=node, reply_to_message_id=mid)
    return SimpleNamespace(metadata=meta, content=content, has_error=lambda: False)


def test_hashes_match_the_protocol() -> None:
    from common.protocol.schemas import slice_hash

    p = _proxy(2, 16)
    assert p.hashes == [slice_hash(im) for im in p.images]


def _msg(node: int, job: int) -> Any:
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=node, group_id=f"q{job}"),
                           content=job)


def _run(grid: FakeGrid, n_jobs: int, window: int, timeout: float, reject: tuple = ()
         ) -> tuple[list[tuple[int, int, float]], list[tuple[int, str, float]]]:
    got: list[tuple[int, int, float]] = []
    dropped: list[tuple[int, str, float]] = []

    def accept(node: int, job: int, m: Any) -> bool:
        got.append((node, job, round(grid.now, 6)))
        return (node, job) not in reject

    run_windowed(grid, sorted(grid.service), n_jobs, _msg, accept,  # type: ignore[arg-type]
                 lambda n, why: dropped.append((n, why, round(grid.now, 6))), window, timeout,
                 poll=0.5, clock=grid.clock, sleep=grid.sleep)
    return got, dropped


def test_a_slow_site_holds_back_only_itself() -> None:
    grid = FakeGrid({1: 1.0, 2: 5.0})
    got, dropped = _run(grid, n_jobs=6, window=2, timeout=100.0)
    assert dropped == []
    for node in (1, 2):  # every chunk once, answered in order
        assert [j for n, j, _ in got if n == node] == [0, 1, 2, 3, 4, 5]
    # node 1 answers chunk k at k+1 s (polls every 0.5 s): done at 6 s, not after 6 x 5 s
    assert [t for n, _, t in got if n == 1] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert [t for n, _, t in got if n == 2] == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    assert grid.max_in_air == {1: 2, 2: 2}  # the window, never more
    assert grid.pushed[0] == [(1, "q0"), (1, "q1"), (2, "q0"), (2, "q1")]  # one batched push


def test_a_silent_site_is_dropped_after_the_timeout_and_the_rest_finish() -> None:
    grid = FakeGrid({1: 1.0, 2: None})
    got, dropped = _run(grid, n_jobs=6, window=3, timeout=3.0)
    assert dropped == [(2, NO_REPLY, 3.5)]  # first poll past 3 s without a reply
    assert [j for n, j, _ in got if n == 1] == [0, 1, 2, 3, 4, 5] and got[-1][2] == 6.0
    assert all(n == 1 for n, _, _ in got)
    assert sum(1 for push in grid.pushed for n, _ in push if n == 2) == 3  # its window only


def test_an_invalid_reply_drops_the_site_and_nothing_more_is_sent_to_it() -> None:
    grid = FakeGrid({1: 1.0, 2: 1.0})
    got, dropped = _run(grid, n_jobs=5, window=2, timeout=100.0, reject=((1, 1),))
    assert [j for n, j, _ in got if n == 1] == [0, 1]  # chunk 2 was in flight: ignored
    assert [g for push in grid.pushed for n, g in push if n == 1] == ["q0", "q1", "q2"]
    assert [j for n, j, _ in got if n == 2] == [0, 1, 2, 3, 4] and dropped == []


def _proxy(n: int, side: int) -> Any:
    from coordinator.distill.proxy import ProxySet

    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, 1, side, side)).astype(np.float32)
    masks = (rng.random((n, side, side)) > 0.5).astype(np.uint8)
    hashes = [hashlib.sha256(images[i].tobytes()).hexdigest() for i in range(n)]  # slice_hash
    return ProxySet(images, masks, [f"c:{i}" for i in range(n)], hashes)


def _site_answer(node: int, msg: Any) -> Any:
    """A fake site: seeded random targets per (node, chunk), encoded like a real site."""
    from common.compress import CompressionConfig
    from common.protocol import decode_query, encode_teacher_reply

    cfg, images, _ = decode_query(msg.content)
    t = random_targets(len(images), cfg.size, seed=100 * node + cfg.chunk)
    return encode_teacher_reply(f"site_{node}", cfg, t, CompressionConfig(mode="fp32"))


def _query_round(window: int, monkeypatch: pytest.MonkeyPatch, tmp: Path, answer: Any = None,
                 nodes: tuple[int, ...] = (2, 3)) -> tuple[dict, Any]:
    """The round over a fake grid; answers written into a teacher cache under ``tmp``."""
    from flwr.supercore.task_identity import TaskIdentity

    from coordinator.distill.cache import TeacherCache
    from coordinator.fed_query import AnswerStore, Roster, query_round

    for key, value in (("_task_id", 1), ("_run_id", 7), ("_node_id", 0)):  # a ServerApp's
        monkeypatch.setattr(TaskIdentity, key, value)
    kd = SimpleNamespace(feature_taps="emkd", at_form="zagoruyko", at_p=2, temperature=1.0,
                         teacher_field="centre")
    cfg = SimpleNamespace(kd=kd, student=SimpleNamespace(size=32, teacher_batch_size=4))
    s = SimpleNamespace(chunk_size=4, query_window=window, timeout=50.0, trail=None)
    grid = FakeGrid(dict(zip(nodes, (1.0, 2.0), strict=True)), answer or _site_answer,
                    auto=True)
    roster = Roster({n: f"site_{n}" for n in nodes})
    store = AnswerStore(TeacherCache(tmp), {f"site_{n}": "ab" * 32 for n in nodes}, 10)
    out = query_round(grid, roster, _proxy(10, 32), cfg, s, "7", store)  # type: ignore[arg-type]
    return out, roster


@pytest.mark.parametrize("window", [0, 3])
def test_query_round_concatenates_chunks_in_order(window: int, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """Pipelined (window 3) and lockstep (window 0) rounds give the same, ordered targets
    (read back from the fp16 cache the replies were written to)."""
    side, n = 32, 10
    out, roster = _query_round(window, monkeypatch, tmp_path)
    assert sorted(out) == ["site_2", "site_3"] and roster.dropped == {}
    for node in (2, 3):  # chunks of 3, 4, 3 slices (balanced), in chunk order
        want = torch.cat([random_targets(k, side, seed=100 * node + c).logits
                          for c, k in enumerate((3, 4, 3))], dim=1)
        got = out[f"site_{node}"].materialise().logits
        assert got.shape == (1, n, 2, side, side)
        assert torch.equal(got, want.half().float())  # the cache's fp16 rounding, nothing else


def test_a_dead_site_is_dropped_on_the_superlinks_error_reply(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The SuperLink answers for a dead node (source: its own node id 1): the site the
    request went to is dropped, with the reason, and leaves no cache; the other site's answers
    are kept (and cached)."""
    def answer(node: int, msg: Any) -> Any:
        return "UNAVAILABLE" if node == 3 else _site_answer(node, msg)

    out, roster = _query_round(4, monkeypatch, tmp_path, answer)
    assert sorted(out) == ["site_2"] and roster.names == {2: "site_2"}
    assert roster.dropped == {3: "error reply: 5 Error: Node Unavailable"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site_2-abababababababab"]


def test_replies_pulled_together_are_taken_in_the_order_the_site_made_them() -> None:
    """Two replies of one site pulled in one batch, listed newest first (the SuperLink keeps no
    order): they are accepted oldest first, so the site's signed log heads never go back."""
    made = {"m0": 2.0, "m1": 1.0}  # the site answered job 1 before job 0

    class BatchGrid:
        def push_messages(self, msgs: list[Any]) -> list[str]:
            return [f"m{m.content}" for m in msgs]

        def pull_messages(self, ids: list[str]) -> list[Any]:
            return [SimpleNamespace(metadata=SimpleNamespace(
                src_node_id=1, reply_to_message_id=i, created_at=made[i]), content=i,
                has_error=lambda: False) for i in sorted(ids)]

    got: list[int] = []
    run_windowed(BatchGrid(), [1], 2, _msg, lambda n, j, m: got.append(j) or True,  # type: ignore[arg-type]
                 lambda n, why: None, window=2, timeout=10.0, poll=0.0, sleep=lambda s: None)
    assert got == [1, 0]
