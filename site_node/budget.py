"""Query budgets: what one run and one coordinator may have answered (model-extraction limit).

Two caps, both charged before any teacher work and kept on disk in ``<state-dir>/
query_budget.json`` (so they hold across runs and SuperNode restarts):

* per ``run_id`` (policy ``max_queries_per_run``, ``max_slices_per_run``);
* per coordinator identity, across all its runs (policy ``[coordinator_budget]``:
  ``max_queries`` and ``max_slices`` within any ``window_hours``, a rolling window counted in
  whole hours; ``window_hours = 0``: over the site's lifetime). The identity is the
  fingerprint of the coordinator's pinned audit key (node config ``coordinator-key``); without a
  pinned key every coordinator shares one identity, :data:`UNPINNED`, because an unpinned
  signer can make itself a new key (and a fresh budget) at will.

State file layout::

    {"runs": {"<run_id>": {"queries": q, "slices": s}},
     "coordinators": {"<identity>": {"lifetime": [q, s], "hours": {"<unix hour>": [q, s]}}}}
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from common.io import atomic_write_json
from site_node.policy import ALLOW, Decision, EgressPolicy

UNPINNED = "any coordinator (no pinned key)"
FILE = "query_budget.json"


def _hour(now: float) -> int:
    return int(now // 3600)


class QueryBudget:
    """Per-run and per-coordinator query budgets in one JSON state file (see the module
    docstring); ``clock`` gives the time in seconds (tests)."""

    def __init__(self, path: Path, policy: EgressPolicy,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.policy = policy
        self.clock = clock

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"runs": {}, "coordinators": {}}
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: not a budget state file")
        data.setdefault("runs", {})
        data.setdefault("coordinators", {})
        return data

    def usage(self, run_id: str) -> dict[str, int]:
        """``{"queries": q, "slices": s}`` already charged to ``run_id``."""
        return dict(self._load()["runs"].get(run_id, {"queries": 0, "slices": 0}))

    def window_usage(self, identity: str) -> tuple[int, int]:
        """``(queries, slices)`` charged to ``identity`` in the current window (or ever)."""
        return self._window(self._load()["coordinators"].get(identity, {}))

    def _window(self, who: Mapping[str, Any]) -> tuple[int, int]:
        hours = self.policy.coordinator_budget.window_hours
        if hours <= 0:
            q, s = who.get("lifetime", [0, 0])
            return int(q), int(s)
        first = _hour(self.clock()) - int(hours) + 1 if hours >= 1 else _hour(self.clock())
        live = [v for k, v in who.get("hours", {}).items() if int(k) >= first]
        return sum(int(v[0]) for v in live), sum(int(v[1]) for v in live)

    def _run_refusal(self, used: Mapping[str, int], n_slices: int) -> str | None:
        p = self.policy
        if n_slices < p.min_query_batch:
            return f"query of {n_slices} slices < min_query_batch {p.min_query_batch}"
        if n_slices > p.max_slices_per_query:
            return f"query of {n_slices} slices > max_slices_per_query {p.max_slices_per_query}"
        if used["queries"] + 1 > p.max_queries_per_run:
            return f"run already made {used['queries']} queries (max_queries_per_run)"
        if used["slices"] + n_slices > p.max_slices_per_run:
            return (f"run would reach {used['slices'] + n_slices} slices > max_slices_per_run "
                    f"{p.max_slices_per_run}")
        return None

    def _identity_refusal(self, identity: str, who: Mapping[str, Any], n: int) -> str | None:
        b = self.policy.coordinator_budget
        q, s = self._window(who)
        span = f"in {b.window_hours:g} h" if b.window_hours > 0 else "over the site's lifetime"
        if q + 1 > b.max_queries:
            return (f"coordinator {identity} already made {q} queries {span} "
                    f"(coordinator_budget.max_queries {b.max_queries})")
        if s + n > b.max_slices:
            return (f"coordinator {identity} would reach {s + n} slices {span} > "
                    f"coordinator_budget.max_slices {b.max_slices}")
        return None

    def _charge(self, who: dict[str, Any], n: int) -> dict[str, Any]:
        life = who.get("lifetime", [0, 0])
        hours = {k: v for k, v in who.get("hours", {}).items()
                 if int(k) > _hour(self.clock()) - 24 * 366}  # keep at most a year of hours
        now = str(_hour(self.clock()))
        cur = hours.get(now, [0, 0])
        hours[now] = [int(cur[0]) + 1, int(cur[1]) + n]
        return {"lifetime": [int(life[0]) + 1, int(life[1]) + n], "hours": hours}

    def admit_query(self, run_id: str, n_slices: int, identity: str = UNPINNED) -> Decision:
        """Refuse or admit (and charge, before any compute) one query of ``n_slices`` of
        ``run_id`` made by coordinator ``identity``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_name(self.path.name + ".lock").open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            state = self._load()
            used = state["runs"].get(run_id, {"queries": 0, "slices": 0})
            why = self._run_refusal(used, n_slices)
            if why:
                return Decision(False, f"run {run_id!r}: {why}")
            who = state["coordinators"].get(identity, {})
            why = self._identity_refusal(identity, who, n_slices)
            if why:
                return Decision(False, why)
            state["runs"][run_id] = {"queries": used["queries"] + 1,
                                     "slices": used["slices"] + n_slices}
            state["coordinators"][identity] = self._charge(who, n_slices)
            atomic_write_json(self.path, state)
        return ALLOW


def budget_lines(state_dir: Path, policy: EgressPolicy) -> list[str]:
    """What ``site-node status`` shows: each coordinator identity's use against its cap."""
    budget = QueryBudget(state_dir / FILE, policy)
    b = policy.coordinator_budget
    span = f"last {b.window_hours:g} h" if b.window_hours > 0 else "lifetime"
    try:
        who = budget._load()["coordinators"]
    except (OSError, ValueError) as exc:
        return [f"query budget: PROBLEM: {exc}"]
    if not who:
        return [f"query budget: nothing answered yet (cap per coordinator, {span}: "
                f"{b.max_queries} queries, {b.max_slices} slices)"]
    lines = [f"query budget per coordinator ({span}; cap {b.max_queries} queries, "
             f"{b.max_slices} slices):"]
    for identity in sorted(who):
        q, s = budget._window(who[identity])
        life = who[identity].get("lifetime", [0, 0])
        lines.append(f"  {identity}: {q} queries, {s} slices (lifetime {life[0]} queries, "
                     f"{life[1]} slices)")
    return lines
