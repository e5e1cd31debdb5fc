"""Where the teachers live: the one interface between the experiment pipeline and a transport.

:func:`coordinator.distill.experiment.run_experiment` is the one pipeline (plan the runs, get
the teachers' outputs, train the students, score them, write the report); it talks to the sites
only through a :class:`Sites` adapter:

* :class:`coordinator.distill.local_sites.LocalSites` (``coordinator distill --local``): the
  sites' folders are read in-process; teachers run here, students are scored here.
* ``coordinator.fed_sites.GridSites`` (the Flower ``ServerApp``): every step is a message to the
  sites' SuperNodes over Flower's ``Grid``; teachers and test data stay at the sites.

Both give the same outputs for the same config and seeds. :class:`RunStatus` (``run_status.json``
in the experiment folder) records how the run ended and, per expected site, what became of it;
it is written by both transports, also when the run fails, so a caller (``coordinator distill``,
``coordinator simulate``) can tell a partial or failed federation from a complete one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from common.io import atomic_write_json
from common.models.base import SegModel
from coordinator.distill.cache import Targets
from coordinator.distill.config import ExperimentConfig
from coordinator.distill.proxy import ProxySet
from coordinator.distill.results_file import ResultRow

STATUS_FILE = "run_status.json"
STATUS_VERSION = 1
SiteState = Literal["expected", "ready", "answered", "scored", "missing", "dropped"]
#: ``(evaluation name, trained model, run folder) -> (per-site summaries, per-site case scores)``.
Scorer = Callable[[str, SegModel, Path], tuple[dict[str, dict], dict[str, dict]]]


class SitesMissing(RuntimeError):
    """Fewer sites than the experiment requires took part; the message names the missing ones."""


class SiteReport(BaseModel):
    """What became of one expected site."""

    model_config = ConfigDict(extra="forbid")

    state: SiteState = "expected"
    detail: str = ""


class RunStatus(BaseModel):
    """``run_status.json``: how an experiment run ended, written by both transports."""

    model_config = ConfigDict(extra="forbid")

    version: int = STATUS_VERSION
    ok: bool = False
    transport: Literal["local", "federated"]
    reason: str = ""
    seconds: float = 0.0
    sites: dict[str, SiteReport] = Field(default_factory=dict)
    required: int = 0  # fewest sites the experiment accepts
    phases: dict[str, float] = Field(default_factory=dict)  # seconds per pipeline phase

    @property
    def missing(self) -> list[str]:
        """Expected sites that did not take part to the end."""
        return [n for n, r in self.sites.items() if r.state in ("missing", "dropped")]

    def write(self, out: Path) -> Path:
        """Write ``out/run_status.json`` atomically; its path."""
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / STATUS_FILE, self.model_dump(mode="json"))
        return out / STATUS_FILE

    @classmethod
    def read(cls, out: Path) -> RunStatus | None:
        """The status in ``out`` (None when there is none or it cannot be read)."""
        path = out / STATUS_FILE
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None

    def summary_lines(self) -> list[str]:
        """One line per expected site: ``site_a: scored`` / ``site_c: missing (why)``."""
        return [f"{n}: {r.state}" + (f" ({r.detail})" if r.detail else "")
                for n, r in self.sites.items()]


def expected_roster(cfg: ExperimentConfig) -> dict[str, SiteReport]:
    """Every site of the config, in the config's order, not yet heard of."""
    return {s.name: SiteReport() for s in cfg.sites}


def required_sites(cfg: ExperimentConfig, override: int = 0) -> int:
    """Fewest sites a run accepts: ``override`` (run config), else the config's ``min_sites``,
    else every site of the config."""
    return override or cfg.min_sites or len(cfg.sites)


def check_roster(status: RunStatus, present: list[str]) -> None:
    """Raise :class:`SitesMissing` (one line naming the absent sites and why) when fewer than
    ``status.required`` of the expected sites are in ``present``; mark the absent ones."""
    for name, rep in status.sites.items():
        if name not in present and rep.state not in ("missing", "dropped"):
            rep.state = "missing"
    if len([n for n in present if n in status.sites]) >= status.required:
        return
    why = "; ".join(f"{n}: {r.detail or r.state}" for n, r in status.sites.items()
                    if n not in present)
    raise SitesMissing(f"{len(present)} of {len(status.sites)} sites took part, "
                       f"{status.required} required; missing {why}")


class Sites(Protocol):
    """What the experiment pipeline needs from wherever the teachers live."""

    transport: Literal["local", "federated"]
    status: RunStatus
    #: the query round's ``(chunk-size, query-window)`` for the memory guard; (0, 0) local
    guard_query: tuple[int, int]
    #: how many sites the memory guard counts
    expected: int
    #: per live site, the teacher digest (None: not visible to this transport)
    teacher_ids: list[str] | None
    #: per live site, its held-out test volumes (empty where they stay at the sites)
    site_tests: dict[str, list]

    def connect(self, cfg: ExperimentConfig) -> dict[str, float | None]:
        """Reach every expected site (:class:`SitesMissing` when too few answer); each
        live site's teacher validation Dice (None when it has none), in the config's order."""
        ...

    def teacher_outputs(self, cfg: ExperimentConfig, proxy: ProxySet
                        ) -> tuple[list[str], Targets]:
        """The live sites' names and their teachers' outputs on the proxy set, stacked
        ``(J, N, ...)`` in that order (cached on disk)."""
        ...

    def scorer(self, cfg: ExperimentConfig, proxy: ProxySet) -> Scorer:
        """How a trained student is scored on every live site's held-out test cases."""
        ...

    def teacher_rows(self, cfg: ExperimentConfig) -> list[ResultRow]:
        """The teachers' own rows of the table (empty where the transport cannot make them)."""
        ...

    def peer_rows(self, cfg: ExperimentConfig, data: object, rows: list[ResultRow]
                  ) -> list[ResultRow]:
        """``rows`` with their cost, then the peer baselines this transport can run."""
        ...

    def not_run(self, cfg: ExperimentConfig) -> list[str]:
        """One sentence per configured row this transport cannot produce, and why."""
        ...
