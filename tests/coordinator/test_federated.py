"""Federated transport: site handlers, dropping a bad site, and a real local deployment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.kd.targets import TeacherTargets
from common.protocol import (
    EvalConfig,
    Key,
    ProtocolError,
    QueryConfig,
    TrainConfig,
    decode_teacher_reply,
    encode_teacher_reply,
    slice_hash,
)
from tests._helpers import SITES, federated_toml, read_jsonl


def _node(sites: dict, teachers: dict, name: str):  # type: ignore[no-untyped-def]
    from site_node.app import NodeSettings

    return NodeSettings.from_node_config({"data-path": str(sites[name]),
                                          "teacher-dir": str(teachers[name]), "site-name": name})


def _proxy(sites: dict, n: int = 10):  # type: ignore[no-untyped-def]
    from coordinator.distill.proxy import load_proxy

    proxy = load_proxy(sites["proxy"], 32)
    cfg = QueryConfig(run_id="t", chunk=0, n_chunks=1, size=32, slice_hashes=proxy.hashes[:n])
    return proxy.images[:n], proxy.masks[:n], cfg


def test_handle_train_reuses_the_teacher(tiny_sites: dict, tiny_teachers: dict) -> None:
    from site_node.app import handle_train

    node = _node(tiny_sites, tiny_teachers, "site_a")
    before = (node.teacher_dir / "best.pt").stat().st_mtime_ns
    reply = handle_train(node, TrainConfig(run_id="t"))
    card = json.loads((node.teacher_dir / "teacher.json").read_text())
    split = json.loads((node.teacher_dir / "split.json").read_text())
    assert reply.val_dice == pytest.approx(card["val_dice"])
    assert reply.case_count == sum(len(v) for v in split.values())
    assert (node.teacher_dir / "best.pt").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="site-name"):
        type(node).from_node_config({"data-path": "x", "teacher-dir": "y"})


def test_handle_query_matches_the_local_engine(tiny_sites: dict, tiny_teachers: dict) -> None:
    from common.kd.teacher_outputs import teacher_outputs
    from common.models.checkpoint import load_model
    from site_node.app import handle_query

    images, masks, cfg = _proxy(tiny_sites)
    node = _node(tiny_sites, tiny_teachers, "site_b")
    t = handle_query(node, cfg, images, masks)
    site, back = decode_teacher_reply(encode_teacher_reply("site_b", cfg, t), 10, 32, "node 1")
    model, _ = load_model(node.teacher_dir / "best.pt")
    local = teacher_outputs(model, images, masks, torch.device("cpu"))
    assert site == "site_b" and back.logits.shape == (1, 10, 2, 32, 32)
    assert torch.allclose(back.logits, local.logits, atol=2e-2, rtol=1e-2)
    assert torch.allclose(back.rc_deep, local.rc_deep)


def test_handle_evaluate_scores_private_test_cases(tiny_sites: dict, tiny_teachers: dict) -> None:
    from common.models import build_model
    from site_node.app import handle_evaluate

    node = _node(tiny_sites, tiny_teachers, "site_c")
    split = json.loads((node.teacher_dir / "split.json").read_text())
    state = build_model("enet", in_channels=1, num_classes=2).state_dict()
    cfg = EvalConfig(run_id="t", run_name="r", model_name="enet", size=32)
    rep = handle_evaluate(node, cfg, state)
    assert rep.n == len(split["test"]) and 0.0 <= rep.dice_mean <= 1.0
    bad = {k: v for k, v in state.items() if not k.endswith("weight")}
    with pytest.raises(ProtocolError, match="site_c: student weights do not fit enet"):
        handle_evaluate(node, cfg, bad)


def _fake_targets(n: int, value: float) -> object:
    from common.kd.targets import TeacherTargets

    return TeacherTargets(logits=torch.full((1, n, 2, 32, 32), value),
                          at_early=torch.full((1, n, 16, 16), value),
                          at_deep=torch.full((1, n, 4, 4), value),
                          rc_early=torch.full((1, n), value), rc_deep=torch.full((1, n), value))


def test_a_bad_site_is_dropped_and_fusion_goes_on() -> None:
    from coordinator.fed_query import Reply, Roster, fuse_sites, validate_replies

    n = 4
    cfg = QueryConfig(run_id="t", chunk=0, n_chunks=1, size=32,
                      slice_hashes=[slice_hash(np.zeros((1, 32, 32)))] * n)
    good = {name: encode_teacher_reply(name, cfg, _fake_targets(n, j))  # type: ignore[arg-type]
            for j, name in enumerate(("site_a", "site_b", "site_c"))}
    good["site_b"][Key.ARRAYS]["features"] = good["site_b"][Key.ARRAYS][Key.RC_DEEP]
    roster = Roster({1: "site_a", 2: "site_b", 3: "site_c", 4: "site_d", 5: "site_e"})
    replies = [Reply(1, good["site_a"]), Reply(2, good["site_b"]), Reply(3, good["site_c"]),
               Reply(4, error="0 ClientApp raised")]  # node 5 never answers

    def dec(c, who):  # type: ignore[no-untyped-def]
        return decode_teacher_reply(c, n, 32, who, chunk=0)

    ok = validate_replies(replies, [1, 2, 3, 4, 5], dec, roster)
    assert sorted(ok) == [1, 3] and roster.names == {1: "site_a", 3: "site_c"}
    assert "unexpected ['features']" in roster.dropped[2] and "site_b" in roster.dropped[2]
    assert "error reply" in roster.dropped[4] and "timeout" in roster.dropped[5]
    names, fused = fuse_sites({site: t for site, t in ok.values()}, min_sites=2)
    assert names == ["site_a", "site_c"] and fused.num_teachers == 2
    assert float(fused.select([1]).logits.mean()) == 2.0
    assert TeacherTargets.stack([fused.teacher(0)]).num_teachers == 1
    with pytest.raises(RuntimeError, match="need at least 3"):
        fuse_sites({site: t for site, t in ok.values()}, min_sites=3)


@pytest.mark.slow
def test_federated_run_equals_the_local_run(tiny_sites: dict, tiny_teachers: dict,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``coordinator simulate`` (the compose topology: init-certs, SuperLink, coordinator, 3
    sites through the container entrypoints on 127.0.0.1, TLS and node auth on) and
    ``distill --local`` on the same config give the same per-case Dice and the same files.
    The experiment has one-round FedAvg and FedBN baselines, so the sites are started with
    weight release on and both rows are trained over the same deployment and scored by every
    site (FedBN: each with the BatchNorm it kept in its state dir)."""
    from coordinator.baselines.costs import PayloadLog
    from coordinator.cli import main as cli_main
    from coordinator.distill.sites import RunStatus
    from coordinator.topology.simulate import SiteNode, simulate

    config = federated_toml(tiny_sites, tiny_teachers, tmp_path)
    config.write_text(config.read_text()
                      + "\n[runs.fedavg]\nrounds = 1\n[runs.fedbn]\nrounds = 1\n")
    nodes = [SiteNode(n, tiny_sites[n], tiny_teachers[n]) for n in SITES]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # every process, the ServerApp too: one thread
    rc = simulate(nodes, config, tmp_path / "work", {"timeout": 120.0}, timeout=240.0)
    log = (tmp_path / "work" / "logs" / "coordinator.log").read_text(errors="replace")
    assert rc == 0, log[-3000:]
    assert "receipts verified against" in log and "UNVERIFIED" not in log
    links = (tmp_path / "work" / "logs" / "superlink.log").read_text(errors="replace")
    for name in SITES:  # site-node run recorded the start of a TLS SuperNode
        (start,) = read_jsonl(tmp_path / "work" / "sites" / name / "runs.jsonl")
        assert start["tls"] is True and start["site"] == name
        assert start["pinned_clientapp"] == "site_node.app:app"
    assert "running on https://127.0.0.1:" in links and "Option `--insecure`" not in links
    fed_out = tmp_path / "exp"
    status = RunStatus.read(fed_out)
    assert status is not None and status.ok and status.transport == "federated"
    assert {n: r.state for n, r in status.sites.items()} == dict.fromkeys(SITES, "scored")
    fed_rows = {r["run"]: r for r in json.loads((fed_out / "results.json").read_text())["rows"]}
    row, fed = fed_rows["multi_inverse_dice_loss"], fed_rows["fedavg"]
    assert row["teachers"] == list(SITES) and list(row["sites"]) == list(SITES)
    assert fed["fedavg_refused"] == {} and list(fed["sites"]) == list(SITES)
    plog = PayloadLog.read(fed_out / "runs" / "fedavg" / "payloads.jsonl")
    for name in SITES:  # the bytes of the row are the logged payloads; each release is audited
        sent = [e.nbytes for e in plog.entries if e.site == name and e.direction == "sent"]
        assert len(sent) == 1 and fed["cost"]["per_site"][name]["sent"] == sum(sent)
        audit = read_jsonl(tmp_path / "work" / "sites" / name / "audit" / "egress.jsonl")
        fedavg = [e["decision"] for e in audit if e["msg_type"] == "query.fedavg_train"]
        assert fedavg == ["received", "sent"] * 2  # FedAvg, then FedBN
        site_state = tmp_path / "work" / "sites" / name
        assert list((site_state / "overlays").rglob("*.png"))  # drawn at the site, kept there
        assert len(list((site_state / "fedbn").glob("*/seed0.pt"))) == 1  # its own BatchNorm
    assert "Not run: teacher rows" in (fed_out / "results.md").read_text()

    # the same config with `coordinator distill --local` (export included), into its own folder,
    # with one thread as every federated process ran: floating-point sums then add up the same
    # way (other thread counts differ in the last bits, which training can amplify)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(["distill", "--local", "--config", str(config),
                         "--out", str(tmp_path / "local")]) == 0
    finally:
        torch.set_num_threads(threads)
    local = {r["run"]: r for r in json.loads((tmp_path / "local" / "results.json")
                                            .read_text())["rows"]}
    for run in ("multi_inverse_dice_loss", "fedavg", "fedbn"):
        for site in SITES:  # per case, in the test split's order
            fed_dice = [c["dice"] for c in fed_rows[run]["cases"][site].values()]
            loc_dice = [c["dice"] for c in local[run]["cases"][site].values()]
            assert fed_dice == pytest.approx(loc_dice, abs=1e-9), (run, site)
    assert _files(fed_out) == _files(tmp_path / "local")


def _files(out: Path) -> set[str]:
    """The output files of an experiment folder, without what only one transport has: the
    site-test overlays (patient images: drawn in-process by --local only), the audit trail
    (federated only), the caches (teacher outputs, --local's kept teacher rows) and the
    per-run checkpoints."""
    skip = ("audit/", "teacher_cache/", "teacher_rows/", "proxy/", "flwr/")
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
            and not str(p.relative_to(out)).startswith(skip) and "/overlays/" not in str(p)
            and p.suffix not in (".pt",)}
