"""The FedAvg row of the federated run (:mod:`coordinator.fed_baselines`): a fake
Grid delivers every message to the sites' REAL ClientApp (egress mod, policy, audit log)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from coordinator.baselines.costs import PayloadLog, payload_bytes
from coordinator.distill.config import (
    ExperimentConfig,
    FedAvgSpec,
    FedBNSpec,
    FedProxSpec,
    RunsConfig,
    SiteSpec,
    StudentTrainConfig,
)
from coordinator.topology.env import SiteNode
from tests._helpers import PushPullGrid, fedavg_site_context

pytestmark = pytest.mark.usefixtures("single_thread")
FEDAVG = "query.fedavg_train"


class WireGrid(PushPullGrid):
    """A Flower Grid stand-in: each message goes to the real site ClientApp of its node (an
    exception comes back as an error reply, as the runtime makes it); every payload that
    crossed is measured (``wire``: (node, direction at the site, type, bytes))."""

    def __init__(self, contexts: dict[int, Any]) -> None:
        self.contexts, self.wire = contexts, []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, msgs: Any, timeout: float | None = None) -> list[Any]:
        from flwr.app import Error, Message

        from coordinator.baselines.fedavg import task_identity
        from site_node.app import app

        out = []
        for m in msgs:
            node, mtype = int(m.metadata.dst_node_id), str(m.metadata.message_type)
            self.wire.append((node, "received", mtype, payload_bytes(m.content)))
            with task_identity(node):
                try:
                    reply = app(m, self.contexts[node])
                    self.wire.append((node, "sent", mtype, payload_bytes(reply.content)))
                except Exception as exc:
                    reply = Message(Error(code=1, reason=str(exc)), reply_to=m)
            out.append(reply)
        return out


def _run(sites: dict, teachers: dict, tmp: Path, allow: tuple[bool, bool],
         runs: RunsConfig | None = None) -> tuple:
    """``federated_baselines`` for sites a (node 1) and b (node 2), 2 rounds of FedAvg (or the
    peer rows of ``runs``)."""
    from coordinator.audit_trail import CoordinatorTrail
    from coordinator.baselines.fedavg import task_identity
    from coordinator.distill.proxy import load_proxy
    from coordinator.distill.student import DistillData
    from coordinator.fed_baselines import federated_baselines
    from coordinator.fed_query import Roster
    from coordinator.fed_sites import eval_round

    names = {1: "site_a", 2: "site_b"}
    grid = WireGrid({n: fedavg_site_context(sites, teachers, tmp, s, a) for (n, s), a in
                     zip(names.items(), allow, strict=True)})
    student = StudentTrainConfig(model="tiny_unet", size=32, epochs=1, batch_size=4,
                                 device="cpu", step_size_up=4)
    cfg = ExperimentConfig(
        out=tmp / "exp", proxy=sites["proxy"], student=student,
        sites=[SiteSpec(name=s, data=sites[s], teacher_dir=teachers[s]) for s in names.values()],
        runs=runs or RunsConfig(fedavg=FedAvgSpec(rounds=2, local_epochs=1)))
    data = DistillData(load_proxy(sites["proxy"], 32), None, list(names.values()), {})
    s = SimpleNamespace(timeout=60.0, chunk_size=64, trail=CoordinatorTrail(cfg.out, "r1"))
    roster = Roster(dict(names))
    no_kd = {"run": "student_only", "teachers": [], "weighting": None, "sites": {},
             "mean_dice": 0.5}
    with task_identity(0):  # what the ServerApp runtime sets
        rows = federated_baselines(grid, roster, data, cfg, s, "r1", [no_kd],  # type: ignore[arg-type]
                                   eval_round)
    return rows, grid, cfg, roster


def test_fedavg_row_over_the_sites_real_app(tiny_sites: dict, tiny_teachers: dict,
                                            tmp_path: Path) -> None:
    rows, grid, cfg, roster = _run(tiny_sites, tiny_teachers, tmp_path, (True, False))
    assert [r["run"] for r in rows] == ["student_only", "fedavg"]
    assert rows[0]["cost"]["left_site"] == "nothing" and rows[0]["cost"]["bytes_sent"] == 0
    fed = rows[1]
    # scored by both sites' evaluate (also site_b, which released no weights)
    assert set(fed["sites"]) == {"site_a", "site_b"}
    dice = [fed["sites"][s]["dice_mean"] for s in ("site_a", "site_b")]
    assert all(0.0 <= d <= 1.0 for d in dice) and fed["mean_dice"] == pytest.approx(sum(dice) / 2)
    assert [m for _, _, m, _ in grid.wire].count("evaluate") == 4  # 2 sites x (in + out)
    # site_b refused every round, was reported, and stays in the roster
    assert list(fed["fedavg_refused"]) == ["site_b"]
    assert "weight_release.allow = false" in fed["fedavg_refused"]["site_b"]
    assert roster.names == {1: "site_a", 2: "site_b"}
    # bytes: the payload log equals what crossed the wire, and the row's cost sums it
    wire = [(n, d, b) for n, d, m, b in grid.wire if m == FEDAVG]
    plog = PayloadLog.read(cfg.out / "runs" / "fedavg" / "payloads.jsonl")
    node = {"site_a": 1, "site_b": 2}
    assert sorted((node[e.site], e.direction, e.nbytes) for e in plog.entries) == sorted(wire)
    c = fed["cost"]
    assert c["left_site"] == "model weights" and c["messages"] == 2 * 3  # a: 2, b: 1 per round
    for site in ("site_a", "site_b"):
        for way in ("sent", "received"):
            assert c["per_site"][site][way] == sum(b for n, d, b in wire
                                                   if n == node[site] and d == way)
    assert c["per_site"]["site_b"]["sent"] == 0 and c["per_site"]["site_b"]["received"] > 0
    n_params = sum(v.numel() for v in torch.load(Path(fed["checkpoint_dir"]) / "last.pt",
                                                   weights_only=False)["model"].values())
    assert c["per_site"]["site_a"]["sent"] > 2 * 4 * n_params  # two rounds of float32 weights
    from coordinator.distill.report import write_costs_csv

    write_costs_csv(rows, cfg.out / "costs.csv")  # what the report writes for these rows
    with (cfg.out / "costs.csv").open() as fh:
        table = {r[0]: r for r in csv.reader(fh)}
    assert int(table["fedavg"][table["run"].index("site_a sent")]) == c["per_site"]["site_a"][
        "sent"]
    # the coordinator's exchange log: each request out, site_b's refusals in
    trail = [json.loads(x) for x in (cfg.out / "audit" / "coordinator.jsonl").read_text()
             .splitlines()]
    fedavg = [(e["peer"], e["direction"], e["decision"]) for e in trail
              if e["msg_type"] == FEDAVG]
    assert fedavg.count(("node 2", "in", "refused")) == 2
    assert fedavg.count(("node 1", "in", "received")) == 2


def test_fedprox_and_fedbn_rows_over_the_sites_real_app(tiny_sites: dict, tiny_teachers: dict,
                                                        tmp_path: Path) -> None:
    """FedProx (1 round) and FedBN (2 rounds) as ``query.fedavg_train`` through the egress gate:
    site_a releases, site_b refuses. FedBN: no BatchNorm crosses, site_a keeps its own in its
    state dir and is scored with it; site_b, which trained no round, has no FedBN score."""
    runs = RunsConfig(fedprox=FedProxSpec(rounds=1, mu=0.01), fedbn=FedBNSpec(rounds=2))
    rows, grid, cfg, roster = _run(tiny_sites, tiny_teachers, tmp_path, (True, False), runs)
    assert [r["run"] for r in rows] == ["student_only", "fedprox", "fedbn"]
    prox, bn = rows[1], rows[2]
    assert prox["weighting"] == "Flower FedProx mu=0.01 1 rounds x 1 ep"
    assert set(prox["sites"]) == {"site_a", "site_b"}
    assert all("dice_mean" in v for v in prox["sites"].values())
    assert "dice_mean" in bn["sites"]["site_a"] and bn["mean_dice"] == pytest.approx(
        bn["sites"]["site_a"]["dice_mean"])
    assert "trained no FedBN round" in bn["sites"]["site_b"]["error"]
    state = tmp_path / "site_a" / "state" / "fedbn" / "r1" / "seed0.pt"
    kept = torch.load(state, weights_only=True)
    assert len(kept) == 50 and int(kept["stem.1.num_batches_tracked"]) > 0
    # bytes: each row's log equals what crossed; FedBN's weights lack 1280 floats + 10 counters
    node = {"site_a": 1, "site_b": 2}
    wire = [(n, d, b) for n, d, m, b in grid.wire if m == FEDAVG]
    logs = {r: PayloadLog.read(cfg.out / "runs" / r / "payloads.jsonl") for r in ("fedprox",
                                                                                  "fedbn")}
    assert sorted((node[e.site], e.direction, e.nbytes) for lg in logs.values()
                  for e in lg.entries) == sorted(wire)
    sent = {r: [e.nbytes for e in lg.entries if e.direction == "sent"] for r, lg in logs.items()}
    assert len(sent["fedprox"]) == 1 and len(sent["fedbn"]) == 2
    assert 1280 * 4 + 10 * 8 <= sent["fedprox"][0] - sent["fedbn"][0] < 1280 * 4 + 4000
    assert bn["cost"]["left_site"] == "model weights less BatchNorm"
    assert bn["cost"]["per_site"]["site_a"]["sent"] == sum(sent["fedbn"])
    evals = [b for n, d, m, b in grid.wire if m == "evaluate" and n == 1 and d == "received"]
    assert len(evals) == 2 and 1280 * 4 <= evals[0] - evals[1]  # FedBN's: no BatchNorm sent
    audit = [json.loads(x) for x in (tmp_path / "site_a" / "state" / "audit" / "egress.jsonl")
             .read_text().splitlines()]
    released = [e["config"].get("release") for e in audit
                if e["msg_type"] == FEDAVG and e["decision"] == "sent"]
    assert released == ["model weights", "model weights less BatchNorm",
                        "model weights less BatchNorm"]


def test_no_site_releasing_weights_gives_no_row(tiny_sites: dict, tiny_teachers: dict,
                                                tmp_path: Path) -> None:
    rows, grid, _, roster = _run(tiny_sites, tiny_teachers, tmp_path, (False, False))
    assert [r["run"] for r in rows] == ["student_only"]
    assert {m for _, _, m, _ in grid.wire} == {FEDAVG}  # refused, so nothing was scored
    assert roster.names == {1: "site_a", 2: "site_b"}


def test_simulate_enables_weight_release_only_for_a_fedavg_run(
        tiny_sites: dict, tiny_teachers: dict, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from coordinator.topology.env import role_envs
    from coordinator.topology.simulate import make_plan
    from tests._helpers import SITES, federated_toml

    config = federated_toml(tiny_sites, tiny_teachers, tmp_path)
    nodes = [SiteNode(n, tiny_sites[n], tiny_teachers[n]) for n in SITES]

    def release(cfg_file: Path) -> set[str]:
        plan = make_plan(nodes, cfg_file, tmp_path / "w", {}, 60.0, insecure=True)
        return {r.env["SITE_WEIGHT_RELEASE"] for r in role_envs(plan) if r.role == "site"}

    with caplog.at_level(logging.INFO, logger="coordinator.topology.simulate"):
        assert release(config) == {"off"}
        assert "sites keep the default policy" in caplog.text
        fed = tmp_path / "fedavg.toml"
        fed.write_text(config.read_text() + "\n[runs.fedavg]\nrounds = 2\n")
        assert release(fed) == {"on"}
        assert "weight release ENABLED in each site's policy" in caplog.text
        for table in ("fedprox", "fedbn"):  # the other weight-sharing rows too
            peer = tmp_path / f"{table}.toml"
            peer.write_text(config.read_text() + f"\n[runs.{table}]\nrounds = 2\n")
            assert release(peer) == {"on"}


def test_mtkd_row_cost_is_its_query_exchange_at_the_run_chunk_size(
        tiny_sites: dict, tmp_path: Path) -> None:
    """MT-KD rows: the ``query.teacher_outputs`` requests and replies per chunk of the run
    config's ``chunk-size``, for each of the row's teachers' sites."""
    from common.kd.targets import TeacherTargets
    from common.protocol import QueryConfig, encode_query
    from coordinator.distill.proxy import load_proxy
    from coordinator.distill.student import DistillData
    from coordinator.fed_baselines import student_cost
    from tests._helpers import random_targets

    proxy = load_proxy(tiny_sites["proxy"], 32)
    n = len(proxy)
    targets = TeacherTargets.stack([random_targets(n, 32, seed=j).teacher(0) for j in (0, 1)])
    data = DistillData(proxy, targets, ["site_a", "site_b"], {})
    cfg = ExperimentConfig(proxy=tmp_path, student=StudentTrainConfig(size=32), sites=[
        SiteSpec(name=s, data=tmp_path, teacher_dir=tmp_path) for s in ("site_a", "site_b")])
    row = {"run": "multi_equal", "teachers": ["site_a", "site_b"]}
    size = -(-n // 3)  # three chunks
    cost = student_cost(row, cfg, data, size)
    assert cost["left_site"] == "outputs on proxy" and cost["messages"] == 2 * 2 * 3
    bounds = [round(i * n / 3) for i in range(4)]
    sent = 0
    for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        qc = QueryConfig(run_id="local", chunk=i, n_chunks=3, size=32,
                         slice_hashes=proxy.hashes[a:b],
                         plan_json=proxy.plan.model_dump_json() if proxy.plan else "",
                         batch_size=cfg.student.teacher_batch_size,
                         temperature=cfg.kd.temperature, at_form=cfg.kd.at_form, p=cfg.kd.at_p)
        sent += payload_bytes(encode_query(proxy.images[a:b], proxy.masks[a:b], qc))
    assert cost["per_site"]["site_a"]["received"] == sent
    assert cost["per_site"]["site_b"]["sent"] > n * 2 * 32 * 32 * 2  # its fp16 logits, at least
    assert student_cost({"run": "student_only", "teachers": []}, cfg, data, size)[
        "left_site"] == "nothing"
