"""Peer baselines: FedAvg through Flower's strategy, payload byte counts, and the
``local_only`` / ``pooled`` / ``fedavg`` / ``fedprox`` / ``fedbn`` rows with cost columns in a
tiny ``--local`` run."""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from coordinator.baselines.costs import PayloadLog, payload_bytes
from coordinator.baselines.fedavg import SiteClient, fedavg_config, local_exchange, run_fedavg
from coordinator.distill.config import (
    ExperimentConfig,
    FedAvgSpec,
    FedBNSpec,
    FedProxSpec,
    KDConfig,
    RunsConfig,
    SiteSpec,
    StudentTrainConfig,
    WeightingSpec,
)
from coordinator.distill.proxy import ProxySet
from tests._helpers import PushPullGrid, fedavg_site_context

pytestmark = pytest.mark.usefixtures("single_thread")
SITES = ("site_a", "site_b", "site_c")


def _student() -> StudentTrainConfig:
    return StudentTrainConfig(model="tiny_unet", size=32, epochs=1, batch_size=4, device="cpu",
                              step_size_up=4, max_lr=0.005)


def _set(n: int, seed: int) -> ProxySet:
    """``n`` random 32 px slices with a square label."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 1, 32, 32)).astype(np.float32)
    masks = np.zeros((n, 32, 32), np.uint8)
    masks[:, 8:20, 8:20] = 1
    return ProxySet(images, masks, [f"c:{i}" for i in range(n)], [str(i) for i in range(n)])


def _clients(tmp_path: Path, sizes: tuple[int, ...] = (4, 8)) -> list[SiteClient]:
    return [SiteClient(f"s{k}", _set(n, k)) for k, n in enumerate(sizes)]


def _run(tmp_path: Path, rounds: int, log: PayloadLog, strategy: Any) -> dict:
    """``rounds`` of FedAvg over two in-process sites of 4 and 8 slices."""
    cfg = ExperimentConfig(proxy=tmp_path, sites=[SiteSpec(name="a", data=tmp_path,
                                                           teacher_dir=tmp_path)],
                           student=_student(), runs=RunsConfig(fedavg=FedAvgSpec(rounds=rounds)))
    assert cfg.runs.fedavg is not None
    clients = _clients(tmp_path)
    return run_fedavg(local_exchange(clients, torch.device("cpu")), {1: "s0", 2: "s1"},
                      _init(), cfg.runs.fedavg, fedavg_config(cfg, "", 0), log,
                      strategy=strategy)


def _init() -> dict[str, torch.Tensor]:
    from common.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny_unet", in_channels=1, num_classes=2)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _tensors(arrays: Any, request: Any) -> dict[str, torch.Tensor]:
    """Packed weights (``common.protocol.pack_weights``) as a state_dict, with the layout of
    ``request``'s config record."""
    from common.protocol import unpack_weights

    return unpack_weights(dict(request.content["config"]), arrays, "test")[0]


class Recording:
    """Wraps Flower's real FedAvg and records every call (the replies it aggregated)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.configured, self.aggregated = inner, [], []

    def configure_train(self, rnd: int, arrays: Any, config: Any, grid: Any) -> Any:
        msgs = list(self.inner.configure_train(rnd, arrays, config, grid))
        self.configured.append((rnd, msgs))
        return msgs

    def aggregate_train(self, rnd: int, replies: Any) -> Any:
        replies = list(replies)
        out = self.inner.aggregate_train(rnd, replies)
        self.aggregated.append((rnd, replies, out[0]))
        return out


def test_fedavg_runs_through_flowers_strategy(tmp_path: Path) -> None:
    from flwr.app import Message
    from flwr.serverapp.strategy import FedAvg

    from coordinator.baselines.fedavg import build_strategy

    real = build_strategy(FedAvgSpec(rounds=2, local_epochs=1), 2)
    assert isinstance(real, FedAvg)
    stub, log = Recording(real), PayloadLog()
    final = _run(tmp_path, 2, log, stub)
    assert [r for r, _ in stub.configured] == [1, 2] and len(stub.aggregated) == 2
    rnd, replies, agg = stub.aggregated[-1]
    replies = sorted(replies, key=lambda m: m.metadata.src_node_id)  # FedAvg samples in any order
    assert all(isinstance(m, Message) for m in replies) and len(replies) == 2
    assert [int(m.content["metrics"]["num-examples"]) for m in replies] == [4, 8]
    # the result is the strategy's aggregate: the 4:8 weighted mean of the two replies
    key = next(k for k, v in final.items() if v.dtype == torch.float32 and v.numel() > 10)
    req0 = stub.configured[0][1][0]  # the weights travel packed: one array per dtype
    assert sorted(req0.content["arrays"].keys()) == ["float32", "int64"]
    a, b = (_tensors(m.content["arrays"], req0)[key].numpy() for m in replies)
    np.testing.assert_allclose(final[key].numpy(), (4 * a + 8 * b) / 12, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_tensors(agg, req0)[key].numpy(), final[key].numpy())
    # each round's request carries the previous global weights
    req = _tensors(stub.configured[1][1][0].content["arrays"], req0)[key].numpy()
    np.testing.assert_allclose(req, _tensors(stub.aggregated[0][2], req0)[key].numpy())


def test_fedavg_rounds_log_progress_with_an_eta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    import common.training as training

    monkeypatch.setattr(training, "PROGRESS_LOG_S", 0.0)  # a line after every round
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: log lines, no bar
    caplog.set_level(logging.INFO, logger="common.training")
    _run(tmp_path, 2, PayloadLog(), None)
    lines = [r.getMessage() for r in caplog.records if "fedavg rounds" in r.getMessage()]
    assert len(lines) == 2
    assert lines[0].startswith("[distill] fedavg rounds: step 1/2 (50 %), ")
    assert lines[1].startswith("[distill] fedavg rounds: step 2/2 (100 %), ")
    assert lines[1].endswith("ETA 0s")


def test_a_stub_strategy_decides_the_weights(tmp_path: Path) -> None:
    """A recording stub whose aggregate is all zeros: the loop returns exactly that."""
    from flwr.app import Array, ArrayRecord

    from coordinator.baselines.fedavg import build_strategy

    class Zeros(Recording):
        def aggregate_train(self, rnd: int, replies: Any) -> Any:
            super().aggregate_train(rnd, replies)
            zero = {k: Array(np.zeros_like(v.numpy())) for k, v in
                    list(replies)[0].content["arrays"].items()}
            return ArrayRecord(zero), None

    stub = Zeros(build_strategy(FedAvgSpec(), 2))
    final = _run(tmp_path, 1, PayloadLog(), stub)
    assert len(stub.aggregated[0][1]) == 2
    assert all(float(v.abs().sum()) == 0.0 for v in final.values())


def test_byte_counts_equal_the_logged_payload_sizes(tmp_path: Path) -> None:
    from flwr.app import Array, ArrayRecord, RecordDict

    from coordinator.baselines.fedavg import build_strategy

    one = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(1000, np.float32))})})
    assert 4000 < payload_bytes(one) < 4300  # 4000 B of data + names, dtype, shape
    stub, log = Recording(build_strategy(FedAvgSpec(), 2)), PayloadLog()
    _run(tmp_path, 2, log, stub)
    requests = [m for _, msgs in stub.configured for m in msgs]  # retyped: same content
    replies = [m for _, reps, _ in stub.aggregated for m in reps]
    assert [e.nbytes for e in log.entries if e.direction == "received"] == [
        payload_bytes(m.content) for m in requests]
    assert [e.nbytes for e in log.entries if e.direction == "sent"] == [
        payload_bytes(m.content) for m in replies]
    log.write(tmp_path / "p.jsonl")
    again = PayloadLog.read(tmp_path / "p.jsonl")
    totals = again.totals(["s0", "s1"])
    for site in ("s0", "s1"):
        mine = [e for e in log.entries if e.site == site]
        assert totals[site]["sent"] == sum(e.nbytes for e in mine if e.direction == "sent")
        assert totals[site]["received"] == sum(e.nbytes for e in mine
                                               if e.direction == "received")
        assert totals[site]["messages"] == 4  # 2 rounds x (request + reply)
    n_params = sum(v.numel() for v in _init().values())
    assert totals["s0"]["sent"] > 2 * 4 * n_params  # two rounds of float32 weights


def _cfg(sites: dict, teachers: dict, out: Path) -> ExperimentConfig:
    return ExperimentConfig(
        name="tiny", out=out, proxy=sites["proxy"],
        sites=[SiteSpec(name=n, data=sites[n], teacher_dir=teachers[n]) for n in SITES],
        student=_student(), kd=KDConfig(),
        runs=RunsConfig(baseline=True, single_teacher=False,
                        weightings=[WeightingSpec(name="equal")], local_only=True,
                        pooled=True, fedavg=FedAvgSpec(rounds=2, local_epochs=1),
                        fedprox=FedProxSpec(rounds=1, mu=0.01), fedbn=FedBNSpec(rounds=2)))


def test_local_run_has_baseline_rows_and_cost_columns(tiny_sites: dict, tiny_teachers: dict,
                                                      tmp_path: Path) -> None:
    from coordinator.distill.experiment import run_experiment
    from coordinator.local_sites import LocalSites

    out = tmp_path / "exp"
    cfg = _cfg(tiny_sites, tiny_teachers, out)
    rows = run_experiment(cfg, LocalSites(cfg))
    names = [r["run"] for r in rows]
    assert names[3:] == ["student_only", "multi_equal", "local_only_site_a", "local_only_site_b",
                         "local_only_site_c", "local_only", "pooled", "fedavg", "fedprox",
                         "fedbn"]
    by = {r["run"]: r for r in rows}
    own = by["local_only"]["sites"]
    for s in SITES:  # local_only = each site's own student on its own test set
        assert own[s] == by[f"local_only_{s}"]["sites"][s]
    assert by["pooled"]["weighting"] == "not federated: data pooled"
    with (out / "costs.csv").open() as fh:
        header, *lines = list(csv.reader(fh))
    table = {r[0]: r for r in lines}
    assert header[:2] == ["run", "what left the sites"] and "site_a sent" in header
    assert table["fedavg"][1] == "model weights" and table["multi_equal"][1] == "outputs on proxy"
    assert table["student_only"][1] == "nothing" and table["local_only"][1] == "nothing"
    assert table["pooled"][1] == "raw data (pooled)"
    col = header.index("site_b sent")
    plog = PayloadLog.read(out / "runs" / "fedavg" / "payloads.jsonl")
    assert int(table["fedavg"][col]) == sum(e.nbytes for e in plog.entries
                                            if e.site == "site_b" and e.direction == "sent")
    assert int(table["fedavg"][header.index("messages")]) == 2 * 2 * 3
    assert int(table["local_only_site_a"][col]) == 0
    assert int(table["multi_equal"][col]) > 0
    md = (out / "results.md").read_text()
    assert "| fedavg |" in md and "## Cost per site" in md and "| pooled |" in md
    fed, multi = by["fedavg"], by["multi_equal"]
    assert (f"`multi_equal` vs `fedavg`: mean Dice {multi['mean_dice']:.3f} vs "
            f"{fed['mean_dice']:.3f}") in md
    assert f"{multi['cost']['bytes_sent']} vs {fed['cost']['bytes_sent']}" in md
    assert (out / "results_tradeoff.png").stat().st_size > 1000
    _check_fedprox_fedbn(out, cfg, by, table, header)


def _check_fedprox_fedbn(out: Path, cfg: ExperimentConfig, by: dict, table: dict,
                         header: list[str]) -> None:
    """The FedProx and FedBN rows of the tiny run: per-case scores in results.json, their
    bytes in costs.csv (FedBN's fewer: no BatchNorm), and the export still takes MT-KD's."""
    import json

    from coordinator.export import pick_default_multi

    saved = {r["run"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    for run in ("fedprox", "fedbn"):
        cases = saved[run]["cases"]
        assert set(cases) == set(SITES) and all(len(c) >= 1 for c in cases.values())
        assert all(0.0 <= v["dice"] <= 1.0 for c in cases.values() for v in c.values())
    assert by["fedprox"]["weighting"] == "Flower FedProx mu=0.01 1 rounds x 1 ep"
    assert "BatchNorm" in by["fedbn"]["weighting"] and "not exported" in saved["fedbn"]["note"]
    col = header.index("site_b sent")
    for run, rounds in (("fedprox", 1), ("fedbn", 2)):
        plog = PayloadLog.read(out / "runs" / run / "payloads.jsonl")
        assert int(table[run][col]) == sum(e.nbytes for e in plog.entries
                                           if e.site == "site_b" and e.direction == "sent")
        assert int(table[run][header.index("messages")]) == rounds * 2 * 3
    assert table["fedprox"][1] == "model weights"
    assert table["fedbn"][1] == "model weights less BatchNorm"
    # FedBN's replies lack tiny_unet's 1280 BatchNorm floats and 10 counters: 2 rounds
    fedavg, fedbn = int(table["fedavg"][col]), int(table["fedbn"][col])
    assert 2 * (1280 * 4 + 10 * 8) <= fedavg - fedbn < 2 * (1280 * 4 + 10 * 8) + 4000
    for site in SITES:  # each site's own BatchNorm was kept where a site keeps it
        assert (out / "runs" / "fedbn" / "site_state" / site / "fedbn" / "local" /
                "seed0.pt").is_file()
    assert pick_default_multi(list(by.values()), cfg)["run"] == "multi_equal"  # type: ignore[index]


class SiteGrid(PushPullGrid):
    """A Flower Grid stand-in that delivers each message to the REAL site ClientApp (egress
    mod included) of its node; a refused message comes back as an error reply."""

    def __init__(self, contexts: dict[int, Any]) -> None:
        self.contexts = contexts

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, msgs: Any, timeout: float | None = None) -> list[Any]:
        from flwr.app import Error, Message

        from coordinator.baselines.fedavg import task_identity
        from site_node.app import app

        out = []
        for m in msgs:
            node = int(m.metadata.dst_node_id)
            with task_identity(node):
                try:
                    out.append(app(m, self.contexts[node]))
                except Exception as exc:  # the runtime turns it into an error reply
                    out.append(Message(Error(code=1, reason=str(exc)), reply_to=m))
        return out


def test_fedavg_over_a_grid_only_averages_sites_that_allow_it(
        tiny_sites: dict, tiny_teachers: dict, tmp_path: Path) -> None:
    """The coordinator's FedAvg loop against the sites' real ClientApp: site_a allows weight
    release, site_b (default policy) refuses; Flower's FedAvg averages site_a's reply only."""
    import json

    from coordinator.baselines.fedavg import build_strategy, grid_exchange

    grid = SiteGrid({1: fedavg_site_context(tiny_sites, tiny_teachers, tmp_path, "site_a", True),
                     2: fedavg_site_context(tiny_sites, tiny_teachers, tmp_path, "site_b", False)})
    cfg = _cfg(tiny_sites, tiny_teachers, tmp_path / "exp")
    assert cfg.runs.fedavg is not None
    spec = cfg.runs.fedavg.model_copy(update={"rounds": 1})
    stub, log = Recording(build_strategy(spec, 2)), PayloadLog()
    final = run_fedavg(grid_exchange(grid), {1: "site_a", 2: "site_b"}, _init(), spec,
                       fedavg_config(cfg, "", 0), log, strategy=stub, grid=grid)
    _, replies, _ = stub.aggregated[0]
    by_node = {int(r.metadata.src_node_id): r for r in replies}  # FedAvg samples in any order
    assert not by_node[1].has_error() and by_node[2].has_error()
    key = next(k for k, v in final.items() if v.dtype == torch.float32 and v.numel() > 10)
    np.testing.assert_allclose(final[key].numpy(), _tensors(by_node[1].content["arrays"],
                                                            stub.configured[0][1][0])[key].numpy())
    assert sorted((e.site, e.direction) for e in log.entries) == [
        ("site_a", "received"), ("site_a", "sent"), ("site_b", "received")]
    audit = {s: [json.loads(x)["decision"] for x in (tmp_path / s / "state" / "audit" /
                                                     "egress.jsonl").read_text().splitlines()]
             for s in ("site_a", "site_b")}
    assert audit == {"site_a": ["received", "sent"], "site_b": ["received", "refused"]}
