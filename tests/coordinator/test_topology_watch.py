"""``coordinator simulate`` without processes: the port allocator, the site watch, the summary."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.topology.supervisor import (
    allocate_ports,
    distinct_ports,
    owns_port,
    port_clash,
)
from coordinator.topology.watch import ProcLike, SiteWatch, WatchedSite, site_summary


def test_allocated_ports_are_distinct_and_free() -> None:
    ports = allocate_ports(40)
    assert len(set(ports)) == 40
    for port in ports:  # all closed again: each can be bound now
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_repeating_allocator_is_asked_again_then_refused() -> None:
    answers: Iterator[tuple[int, ...]] = iter([(5001, 5001, 5002), (5001, 5002, 5003)])
    assert distinct_ports(3, lambda n: next(answers)) == (5001, 5002, 5003)
    assert distinct_ports(1, lambda n: (7000,), exclude=()) == (7000,)
    with pytest.raises(RuntimeError, match="could not find 2 distinct free port"):
        distinct_ports(2, lambda n: (6000, 6000))
    with pytest.raises(RuntimeError, match="could not find 1 distinct"):
        distinct_ports(1, lambda n: (6000,), exclude={6000})


def test_make_plan_gets_distinct_ports_from_a_duplicating_allocator(tmp_path: Path) -> None:
    from coordinator.topology.simulate import SiteNode, make_plan
    from tests._helpers import SITES, federated_toml

    config = federated_toml({"proxy": tmp_path / "p", **dict.fromkeys(SITES, tmp_path)},
                            dict.fromkeys(SITES, tmp_path), tmp_path)  # never read
    nodes = [SiteNode(n, tmp_path, tmp_path) for n in SITES]
    answers = iter([(9000, 9001, 9002, 9000), (9100, 9101, 9102, 9103)])  # site_c = SuperLink
    plan = make_plan(nodes, config, tmp_path / "w", {}, 60.0, insecure=True,
                     ports=lambda n: next(answers))
    assert (plan.superlink_port, plan.node_ports) == (9100, (9101, 9102, 9103))
    with pytest.raises(RuntimeError, match="distinct free port"):
        make_plan(nodes, config, tmp_path / "w", {}, 60.0, insecure=True,
                  ports=lambda n: (9000,) * n)


def test_port_clash_and_ownership(tmp_path: Path) -> None:
    import os

    (tmp_path / "a.log").write_text("ERROR:    [Errno 98] error while attempting to bind on "
                                    "address ('127.0.0.1', 41969): address already in use\n")
    (tmp_path / "b.log").write_text("site site_c: no dataset in /x and SITE_PHANTOM is never\n")
    assert port_clash(tmp_path / "a.log") and not port_clash(tmp_path / "b.log")
    assert not port_clash(tmp_path / "missing.log")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert owns_port(os.getpid(), port)
        assert not owns_port(1, port)  # someone else listening there is not that process
    assert not owns_port(os.getpid(), port)


@dataclass
class FakeProc:
    """A process whose exit code the test sets."""

    pid: int
    rc: int | None = None

    def poll(self) -> int | None:
        return self.rc


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _watch(tmp: Path, required: int, up: set[int], clash: set[str] = frozenset(),
           clock: Clock | None = None) -> tuple[SiteWatch, list[str]]:
    """Three fake sites (pids 1..3, ports 101..103); ``up``: pids listening on their port;
    ``clash``: log names saying the port was taken. Restarts are recorded."""
    restarted: list[str] = []
    sites = [WatchedSite(n, tmp / f"site-{n}.log", 100 + i, FakeProc(i))
             for i, n in enumerate(("site_a", "site_b", "site_c"), start=1)]

    def restart(site: WatchedSite) -> tuple[ProcLike, int]:
        restarted.append(site.name)
        return FakeProc(10 + len(restarted)), 200 + len(restarted)

    watch = SiteWatch(sites, required, lambda pid, port: pid in up, restart,
                      clock=clock or Clock(), port_clash=lambda p: p.stem in clash, window=30.0)
    return watch, restarted


def test_a_site_that_exits_fails_the_run_naming_it(tmp_path: Path) -> None:
    watch, _ = _watch(tmp_path, required=3, up={1, 2, 3})
    assert watch.step() is None and watch.all_healthy()
    watch.sites[2].proc.rc = 1  # type: ignore[attr-defined]
    assert watch.step() == (f"site site_c exited with 1 before the run ended; see "
                            f"{tmp_path / 'site-site_c.log'}")
    assert watch.sites[2].state() == "exited with 1 before the run ended"


def test_a_site_loss_within_min_sites_is_a_warning(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    watch, _ = _watch(tmp_path, required=2, up={1, 2, 3})
    watch.sites[0].proc.rc = -9  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="coordinator.topology.watch"):
        assert watch.step() is None
    assert "site site_a exited with -9 before the run ended; 2 of 3 site(s) left, 2 required" \
        in caplog.text
    assert [s.name for s in watch.live] == ["site_b", "site_c"]
    watch.sites[1].proc.rc = 0  # type: ignore[attr-defined]
    assert watch.step() == (f"site site_b exited with 0 before the run ended; see "
                            f"{tmp_path / 'site-site_b.log'}")


def test_a_site_never_healthy_fails_after_the_window(tmp_path: Path) -> None:
    clock = Clock()
    watch, _ = _watch(tmp_path, required=3, up={1, 2}, clock=clock)
    clock.now = 29.0
    assert watch.step() is None and not watch.all_healthy()
    clock.now = 31.0
    assert watch.step() == ("site site_c not healthy after 30 s (port 103 not listening); "
                            f"see {tmp_path / 'site-site_c.log'}")


def test_a_site_whose_port_was_taken_is_restarted_on_a_fresh_one(tmp_path: Path) -> None:
    clock = Clock()
    watch, restarted = _watch(tmp_path, required=3, up={1, 2, 3, 11}, clash={"site-site_c"},
                              clock=clock)
    assert watch.step() is None  # all listening (site_c on a port someone else holds)
    watch.sites[2].proc.rc = 1  # type: ignore[attr-defined]
    clock.now = 5.0
    assert watch.step() is None and restarted == ["site_c"]
    c = watch.sites[2]
    assert (c.port, c.proc.pid, c.restarts, c.healthy, c.started) == (201, 11, 1, False, 5.0)
    assert watch.step() is None and c.healthy
    assert c.state() == "process running (port 201), restarted 1x (port in use)"
    c.proc.rc = 1  # type: ignore[attr-defined]
    assert watch.step() is None and restarted == ["site_c", "site_c"]
    c.proc.rc = 1  # type: ignore[attr-defined]  # a third clash: given up, loudly
    assert watch.step() == (f"site site_c exited with 1: port 202 already in use (3 tries); "
                            f"see {tmp_path / 'site-site_c.log'}")


def test_the_summary_reads_run_status_or_results(tmp_path: Path) -> None:
    sites = [WatchedSite(n, tmp_path / f"{n}.log", p, FakeProc(p), healthy=True)
             for n, p in (("site_a", 1), ("site_b", 2), ("site_c", 3))]
    sites[2].exit_code, sites[2].failure = -9, "exited with -9 before the run ended"
    assert site_summary(sites, tmp_path)[0] == "site_a: no results file; process running (port 1)"
    (tmp_path / "federated_results.json").write_text(json.dumps(
        {"sites": ["site_a", "site_b"], "dropped": ["site_c: timeout after 120 s"]}))
    assert site_summary(sites, tmp_path) == [
        "site_a: answered; process running (port 1)",
        "site_b: answered; process running (port 2)",
        "site_c: dropped (site_c: timeout after 120 s); exited with -9 before the run ended"]
    assert site_summary(sites, tmp_path, fresh=False)[1] == (
        "site_b: no results file; process running (port 2)")
    (tmp_path / "run_status.json").write_text(json.dumps({"sites": {
        "site_a": {"state": "scored", "detail": ""},
        "site_c": {"state": "dropped", "detail": "no reply in 120 s"}}}))
    assert [line.split(";")[0] for line in site_summary(sites, tmp_path)] == [
        "site_a: scored", "site_b: not in run_status.json",
        "site_c: dropped (no reply in 120 s)"]
