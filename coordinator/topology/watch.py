"""Watching the sites of a local deployment while the coordinator runs, and the end summary.

No processes are started here: :class:`SiteWatch` polls objects with ``poll()``/``pid``
(``subprocess.Popen`` in ``coordinator simulate``, fakes in the tests) and calls back to restart
a site. A site is *healthy* when its process is alive and itself listens on its ClientApp
runtime port (``site-node run --port``, what ``healthcheck.sh site`` checks). A site that exits
before the run ends, or is not healthy within the health window, fails the run (one line naming
it and its log) unless enough sites are left for the experiment (``min_sites``); one that exited
because its port was taken meanwhile is started again on a fresh port.

:func:`site_summary` is what ``coordinator simulate`` prints at the end: every expected site
with its process state and what the run's results say of it (``run_status.json`` or
``federated_results.json`` in the out folder, whichever is there).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: Seconds a started site has to become healthy (data checks and imports come first).
HEALTH_WINDOW = 120.0


class ProcLike(Protocol):
    """What the watch needs of a process."""

    pid: int

    def poll(self) -> int | None: ...


@dataclass
class WatchedSite:
    """One site's process as the watch sees it."""

    name: str  # the site's name (site_c)
    log: Path  # its log file
    port: int  # its ClientApp runtime port
    proc: ProcLike
    started: float = 0.0  # clock() when (re)started
    healthy: bool = False
    restarts: int = 0
    exit_code: int | None = None
    failure: str = ""  # why it is out ("" while it is up)

    def state(self) -> str:
        """``running (port N)``, ``exited with N``, ``never healthy`` ..., plus restarts."""
        if self.failure:
            text = self.failure
        elif self.exit_code is not None:
            text = f"process exited with {self.exit_code}"
        else:
            text = f"process {'running' if self.healthy else 'starting'} (port {self.port})"
        return text + (f", restarted {self.restarts}x (port in use)" if self.restarts else "")


#: ``(site) -> (new process, its port)``: start the site again on a fresh port.
Restart = Callable[[WatchedSite], tuple[ProcLike, int]]


class SiteWatch:
    """Poll the sites (:meth:`step`); the first failure that leaves fewer than ``required``
    sites is returned as one line, lesser losses are logged as warnings."""

    def __init__(self, sites: list[WatchedSite], required: int,
                 listening: Callable[[int, int], bool], restart: Restart,
                 clock: Callable[[], float] = time.monotonic,
                 port_clash: Callable[[Path], bool] = lambda _: False,
                 window: float = HEALTH_WINDOW, max_restarts: int = 2) -> None:
        self.sites, self.required = sites, required
        self.listening, self.restart, self.clock = listening, restart, clock
        self.port_clash, self.window, self.max_restarts = port_clash, window, max_restarts
        for s in sites:
            s.started = s.started or clock()

    @property
    def live(self) -> list[WatchedSite]:
        """Sites neither exited nor given up on."""
        return [s for s in self.sites if not s.failure]

    def all_healthy(self) -> bool:
        """Every live site is healthy."""
        return all(s.healthy for s in self.live)

    def step(self) -> str | None:
        """Check every live site once; the failure line if the run cannot go on."""
        for site in self.live:
            why = self._check(site)
            if why is None:
                continue
            site.failure = why
            if len(self.live) < self.required:
                return f"site {site.name} {why}; see {site.log}"
            log.warning("site %s %s; %d of %d site(s) left, %d required; see %s", site.name,
                        why, len(self.live), len(self.sites), self.required, site.log)
        return None

    def _check(self, site: WatchedSite) -> str | None:
        rc = site.proc.poll()
        if rc is not None:
            return self._exited(site, rc)
        if site.healthy:
            return None
        if self.listening(site.proc.pid, site.port):
            site.healthy = True
            log.info("site %s is healthy (port %d)", site.name, site.port)
        elif self.clock() - site.started > self.window:
            return f"not healthy after {self.window:.0f} s (port {site.port} not listening)"
        return None

    def _exited(self, site: WatchedSite, rc: int) -> str | None:
        site.exit_code = rc
        if not self.port_clash(site.log):
            return f"exited with {rc} before the run ended"
        if site.restarts >= self.max_restarts:
            return f"exited with {rc}: port {site.port} already in use ({site.restarts + 1} tries)"
        old = site.port
        site.proc, site.port = self.restart(site)
        site.restarts += 1
        site.exit_code, site.healthy, site.started = None, False, self.clock()
        log.warning("site %s: port %d already in use; started again on port %d", site.name,
                    old, site.port)
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def run_written(out: Path, since: float) -> bool:
    """Whether the ServerApp finished a run in ``out`` after ``since`` (epoch seconds): a fresh
    ``run_status.json`` saying ``ok``, else (older layout) a fresh ``federated_results.json``."""
    status, legacy = out / "run_status.json", out / "federated_results.json"
    if status.exists() and status.stat().st_mtime >= since:
        return bool((_read_json(status) or {}).get("ok"))
    return legacy.exists() and legacy.stat().st_mtime >= since


def result_states(out: Path, names: list[str]) -> dict[str, str]:
    """What the run's results say of each site: ``run_status.json`` (per-site state and
    detail) if there, else ``federated_results.json`` (``sites`` answered, ``dropped``
    reasons); ``no results file`` when neither is there."""
    status = _read_json(out / "run_status.json")
    if status is not None and isinstance(status.get("sites"), dict):
        reports = status["sites"]
        return {n: (f"{reports[n].get('state', '?')}"
                    + (f" ({reports[n]['detail']})" if reports[n].get("detail") else "")
                    if isinstance(reports.get(n), dict) else "not in run_status.json")
                for n in names}
    results = _read_json(out / "federated_results.json")
    if results is None:
        return dict.fromkeys(names, "no results file")
    answered = set(results.get("sites") or [])
    dropped = [str(d) for d in results.get("dropped") or []]
    states = {}
    for n in names:
        why = [d for d in dropped if n in d]
        states[n] = ("answered" if n in answered else
                     f"dropped ({'; '.join(why)})" if why else "not in the results")
    return states


def site_summary(sites: list[WatchedSite], out: Path, fresh: bool = True) -> list[str]:
    """One line per expected site: ``site_a: answered; process running (port N)``.
    ``fresh=False``: the results in ``out`` are from an earlier run and are not read."""
    names = [s.name for s in sites]
    results = result_states(out, names) if fresh else dict.fromkeys(names, "no results file")
    return [f"{s.name}: {results[s.name]}; {s.state()}" for s in sites]
