"""The federated transport: :class:`GridSites`, the sites as Flower SuperNodes over a ``Grid``.

The :class:`~coordinator.distill.sites.Sites` adapter of the ``ServerApp``. Every step of the
experiment pipeline (:func:`coordinator.distill.experiment.run_experiment`) is a message round:
``train`` (each site names itself and reports its teacher's validation Dice and plan),
``query.teacher_outputs`` (pipelined, :mod:`coordinator.fed_query`), ``evaluate`` (the student
scored on each site's held-out test cases, per-case scores returned under pseudonymous keys),
``query.fedavg_train`` (the FedAvg, FedProx and FedBN peers, :mod:`coordinator.fed_baselines`).

The expected roster is the config's sites. A site that never connects, answers under a name not
in the config, or is dropped (timeout, error, invalid reply) is recorded in the run status; the
run fails with :class:`~coordinator.distill.sites.SitesMissing` (one line naming the absent
sites) when fewer than the required sites (``min_sites``, default all) remain.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from flwr.serverapp import Grid

from common.data.plan import Plan
from common.protocol import (
    EvalConfig,
    MsgType,
    TrainConfig,
    decode_eval_reply,
    decode_train_reply,
    encode_eval,
    encode_train,
)
from coordinator.distill.cache import CachedTargets
from coordinator.distill.config import ExperimentConfig
from coordinator.distill.proxy import ProxySet
from coordinator.distill.sites import (
    RunStatus,
    Scorer,
    SiteReport,
    SitesMissing,
    check_roster,
    expected_roster,
    required_sites,
)
from coordinator.fed_query import Roster, exchange, gather_targets, validate_replies

if TYPE_CHECKING:
    from common.models.base import SegModel
    from coordinator.distill.results_file import ResultRow
    from coordinator.fed_query import QuerySettings

log = logging.getLogger(__name__)
EVAL_ATTEMPTS = 2  # evaluate retry rule: one retry, and a failed evaluate never drops a site
NOT_FEDERATED = {
    "teachers": "teacher rows: a teacher's weights never leave its site, so it cannot be "
                "scored on the other sites' test cases",
    "overlays": "overlays of the sites' test cases: patient images never leave a site; each "
                "site draws them in its own state folder (`<state-dir>/overlays/<run>/`)",
    "local_only": "local_only: needs every site's training data at the coordinator "
                  "(run it with --local)",
    "pooled": "pooled: pools the sites' raw data (run it with --local; a reference only)",
}


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    """Poll ``grid.get_node_ids()`` until ``expected`` nodes are connected or ``timeout``
    seconds passed; the node ids connected then (logged every 10 s while waiting)."""
    deadline, last = time.monotonic() + timeout, 0.0
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected or time.monotonic() > deadline:
            break
        if time.monotonic() - last > 10:
            log.info("waiting for sites: %d of %d connected", len(nodes), expected)
            last = time.monotonic()
        time.sleep(0.2)
    log.info("%d node(s) connected (expected %d)", len(nodes), expected)
    return nodes


def train_round(grid: Grid, nodes: list[int], s: QuerySettings, run_id: str,
                status: RunStatus) -> Roster:
    """``train`` every node; the roster maps node ids to the site names they report (a name
    not in the config, or one already taken, is dropped)."""
    roster = Roster()
    content = {n: encode_train(TrainConfig(run_id=run_id)) for n in nodes}
    ok = validate_replies(exchange(grid, content, MsgType.TRAIN, "train", s.timeout, s.trail),
                          nodes, decode_train_reply, roster)
    for node, (site, rep) in ok.items():
        if site in roster.names.values():
            roster.drop(node, f"duplicate site name {site!r}")
            continue
        if status.sites and site not in status.sites:
            roster.drop(node, f"site {site!r} is not in the experiment's sites "
                              f"{sorted(status.sites)}")
            continue
        roster.names[node] = site
        roster.val_dice[site] = rep.val_dice
        val = "n/a" if rep.val_dice is None else f"{rep.val_dice:.4f}"
        status.sites[site] = SiteReport(state="ready", detail=f"val Dice {val}")
        log.info("%s: teacher ready, val Dice %s on %d cases; plan %s", site, val,
                 rep.case_count, rep.plan_text())
    return roster


def eval_round(grid: Grid, roster: Roster, run: str, state: dict[str, torch.Tensor],
               cfg: ExperimentConfig, s: QuerySettings, run_id: str,
               plan: Plan | None = None, local_bn: int | None = None
               ) -> tuple[dict[str, dict], dict[str, dict]]:
    """Send the student (and its preprocessing ``plan``: the proxy set's) to every live site;
    per-site metric summaries and per-site case scores, keyed by site name. ``local_bn``
    (FedBN rows: the run's seed): ``state`` lacks the BatchNorm entries and each site scores
    with the BatchNorm state it kept for ``run_id`` and that seed.

    Retry rule: a site whose evaluate fails (timeout, error reply, invalid reply) is asked
    again, up to :data:`EVAL_ATTEMPTS` in all; if every attempt fails, this student has no
    score from it (``{"error": why}``) but the site stays in ``roster`` and scores later runs."""
    ec = EvalConfig(run_id=run_id, run_name=run, model_name=cfg.student.model,
                    size=cfg.student.size, plan_json=plan.model_dump_json() if plan else "",
                    local_bn=local_bn)
    rd = encode_eval(ec, state)
    todo, out, cases = list(roster.names), dict[str, dict](), dict[str, dict]()
    failed = Roster(dict(roster.names), verb="evaluate failed for")
    for attempt in range(EVAL_ATTEMPTS):
        group = f"eval-{run}" + (f"-retry{attempt}" if attempt else "")
        failed = Roster(dict(roster.names), verb="evaluate failed for")
        replies = exchange(grid, dict.fromkeys(todo, rd), MsgType.EVALUATE, group, s.timeout,
                           s.trail)
        for site, rep in validate_replies(replies, todo, decode_eval_reply, failed).values():
            out[site] = rep.summary()
            cases[site] = _case_scores(rep)
        todo = [n for n in todo if n in failed.dropped]
        if not todo:
            break
    for node in todo:
        log.info("%s: no score for %s after %d attempts; the site stays in the roster "
                 "(evaluate retry rule)", roster.names[node], run, EVAL_ATTEMPTS)
        out[roster.names[node]] = {"error": failed.dropped[node]}
    order = {site.name: k for k, site in enumerate(cfg.sites)}  # the config's site order
    rank = lambda kv: (order.get(kv[0], len(order)), kv[0])  # noqa: E731
    return dict(sorted(out.items(), key=rank)), dict(sorted(
        ((k, v) for k, v in cases.items() if v), key=rank))


def _case_scores(rep: object) -> dict[str, dict]:
    """The reply's per-case scores ``{case key: {dice, voe, hd95}}`` ({} when it has none)."""
    fn = getattr(rep, "case_scores", None)
    return dict(fn()) if callable(fn) else {}


class GridSites:
    """The config's sites as SuperNodes reached over ``grid``."""

    transport: Literal["local", "federated"] = "federated"

    def __init__(self, grid: Grid, s: QuerySettings, run_id: str, cfg: ExperimentConfig,
                 train: bool = True, min_sites: int = 0) -> None:
        self.grid, self.s, self.run_id, self.train = grid, s, run_id, train
        self.status = RunStatus(transport="federated", sites=expected_roster(cfg),
                                required=required_sites(cfg, min_sites))
        self.roster = Roster()
        self.teacher_ids: list[str] | None = None
        self.site_tests: dict[str, list] = {}
        self.guard_query = (int(s.chunk_size), int(s.query_window))
        self.expected = int(getattr(s, "expected_sites", 0) or len(cfg.sites))

    def connect(self, cfg: ExperimentConfig) -> dict[str, float | None]:
        """Wait for every expected site, then the ``train`` round (names, val Dice, plans)."""
        nodes = wait_for_nodes(self.grid, len(cfg.sites), self.s.timeout)
        if self.train:
            self.roster = train_round(self.grid, nodes, self.s, self.run_id, self.status)
        else:
            self.roster.names = {n: f"node{n}" for n in nodes}
            self.status.sites = {f"node{n}": SiteReport(state="ready") for n in nodes}
            self.status.required = min(self.status.required, len(nodes)) or 1
        self._note_absent(len(nodes), len(cfg.sites))
        check_roster(self.status, list(self.roster.names.values()))
        return {site: self.roster.val_dice.get(site) for site in self._ordered()}

    def _ordered(self) -> list[str]:
        """Live site names in the config's order."""
        live = set(self.roster.names.values())
        return [n for n in self.status.sites if n in live]

    def _note_absent(self, connected: int, expected: int) -> None:
        """Why each expected site is not in the roster after the train round."""
        live = set(self.roster.names.values())
        why = (f"never connected ({connected} of {expected} sites connected)"
               if connected < expected else "no valid train reply")
        if self.roster.dropped:
            why += ": " + "; ".join(f"node {n}: {w}" for n, w in self.roster.dropped.items())
        for site in self.status.sites:
            if site not in live:
                self.status.sites[site] = SiteReport(state="missing", detail=why)

    def teacher_outputs(self, cfg: ExperimentConfig, proxy: ProxySet
                        ) -> tuple[list[str], CachedTargets]:
        """The pipelined query round (answers cached as they arrive), sites in config order."""
        before = dict(self.roster.names)
        parts = gather_targets(self.grid, self.roster, proxy, cfg, self.s, self.run_id)
        for node, site in before.items():
            if node not in self.roster.names:
                self.status.sites[site] = SiteReport(
                    state="dropped", detail=self.roster.dropped.get(node, "dropped"))
        names = [n for n in self._ordered() if n in parts]
        for n in names:
            self.status.sites[n].state = "answered"
        check_roster(self.status, names)
        if not names:
            raise SitesMissing("no site answered the query round")
        return names, CachedTargets.stack([parts[n] for n in names])

    def scorer(self, cfg: ExperimentConfig, proxy: ProxySet) -> Scorer:
        """Scores from the sites' ``evaluate`` replies (the student's weights and plan sent)."""
        def score(name: str, model: SegModel, out: Path) -> tuple[dict, dict]:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            sites, cases = eval_round(self.grid, self.roster, name, state, cfg, self.s,
                                      self.run_id, proxy.plan)
            for site, m in sites.items():
                if "error" not in m and site in self.status.sites:
                    self.status.sites[site].state = "scored"
            return sites, cases

        return score

    def teacher_rows(self, cfg: ExperimentConfig) -> list[ResultRow]:
        """None: teacher weights never leave the sites (see :meth:`not_run`)."""
        return []

    def peer_rows(self, cfg: ExperimentConfig, data: object, rows: list[ResultRow]
                  ) -> list[ResultRow]:
        """Costs of the student rows, then the FedAvg, FedProx and FedBN rows over the Grid
        when configured."""
        from coordinator.distill.student import DistillData
        from coordinator.fed_baselines import federated_baselines

        assert isinstance(data, DistillData)

        return federated_baselines(self.grid, self.roster, data, cfg, self.s, self.run_id,
                                   rows, eval_round)

    def not_run(self, cfg: ExperimentConfig) -> list[str]:
        """The configured rows a federation cannot produce, each with its reason."""
        out = [NOT_FEDERATED["teachers"], NOT_FEDERATED["overlays"]]
        if cfg.runs.local_only:
            out.append(NOT_FEDERATED["local_only"])
        if cfg.runs.pooled:
            out.append(NOT_FEDERATED["pooled"])
        return out
