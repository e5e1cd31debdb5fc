"""``coordinator simulate --engine ray`` (Flower's Simulation Engine).

Not marked slow: the 12-site run takes 30-45 s on an idle 2-core machine (96 s when five
agents shared it).

The end-to-end test runs 12 virtual sites (each with its own copy of a tiny phantom data set
and teacher) on the Ray engine; site_00's private images carry a canary. A recording tap in
the virtual sites' ClientApp (:class:`coordinator.topology.ray_engine.SiteConfigMod`
``capture``) keeps the bytes of every array that entered or left a site; the canary must be in
none of them, while the proxy slices sent to the sites are (positive control). Every site's
signed egress log and the coordinator's log verify, and every receipt was verified.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests._helpers import (
    NO_AUGMENT,
    QUICK_TEACHER,
    experiment_toml,
    read_jsonl,
    tiny_teacher_config,
)

N_SITES = 12


def test_every_virtual_site_gets_its_own_node_config(tmp_path: Path) -> None:
    from coordinator.topology.env import SiteNode
    from coordinator.topology.ray_engine import SiteConfigMod, site_configs, site_keys_dir
    from site_node.node_config import NodeSettings

    sites = [SiteNode(f"s{i}", tmp_path / f"d{i}", tmp_path / f"t{i}") for i in range(3)]
    configs = site_configs(sites, tmp_path / "w")
    nodes = [NodeSettings.from_node_config(c) for c in configs]
    assert [n.site_name for n in nodes] == ["s0", "s1", "s2"]
    assert [n.data for n in nodes] == [(tmp_path / f"d{i}").resolve() for i in range(3)]
    assert nodes[2].state_dir == (tmp_path / "w" / "sites" / "s2").resolve()
    assert nodes[1].audit_key == (tmp_path / "w" / "sites" / "s1" / "keys" / "audit.key").resolve()
    pubs = sorted(p.name for p in site_keys_dir(tmp_path / "w").iterdir())
    assert pubs == ["s0.pub", "s1.pub", "s2.pub"]
    assert len({(site_keys_dir(tmp_path / "w") / p).read_bytes() for p in pubs}) == 3
    assert site_configs(sites, tmp_path / "w") == configs  # keys kept on a rerun

    seen = []
    ctx = SimpleNamespace(node_config={"partition-id": 1, "num-partitions": 3})
    mod = SiteConfigMod(configs)
    assert mod("msg", ctx, lambda m, c: seen.append(dict(c.node_config)) or "reply") == "reply"
    assert seen == [configs[1]]  # the handler saw site 1's config ...
    assert ctx.node_config == {"partition-id": 1, "num-partitions": 3}  # ... Flower keeps its


def test_the_virtual_sites_run_the_sites_own_client_app() -> None:
    from coordinator.topology.ray_engine import client_app, site_client_app
    from site_node.app import app

    assert site_client_app() is app
    handled = set(client_app([])._registered_funcs)
    assert handled == set(app._registered_funcs) and "query.teacher_outputs" in handled


def test_simulate_parser_and_run_config_flags() -> None:
    from coordinator.cli import build_parser
    from coordinator.topology.simulate import run_config_flags

    args = build_parser().parse_args(["simulate", "--sites", "12", "--config", "e.toml",
                                      "--workdir", "w", "--engine", "ray", "--query-window", "2",
                                      "--ray-address", "10.0.0.2:6379"])
    assert (args.engine, args.ray_address, args.client_cpus) == ("ray", "10.0.0.2:6379", 1.0)
    assert run_config_flags(args) == {"train": True, "query-window": 2}
    default = build_parser().parse_args(["simulate", "--sites", "3", "--config", "e.toml",
                                         "--workdir", "w", "--round-timeout", "30"])
    assert default.engine == "processes"
    assert run_config_flags(default) == {"train": True, "timeout": 30.0}


CANARY = (np.arange(16, dtype=np.float32) * 7.25 + 3141.5).astype(np.float32)


def _virtual_sites(tiny_sites: dict, tiny_teachers: dict, root: Path
                   ) -> dict[str, tuple[Path, Path]]:
    """12 sites, each its own copy of a tiny site and teacher; site_00 is a canary copy of
    site_a with a teacher trained on it."""
    from site_node.train import run_training
    from tests.coordinator.test_privacy_e2e import plant_canary

    out = {}
    for i in range(N_SITES):
        base = ("site_a", "site_b", "site_c")[i % 3]
        name, data, teacher = f"site_{i:02d}", root / f"d{i:02d}", root / f"t{i:02d}"
        shutil.copytree(tiny_sites[base], data)
        if i == 0:
            assert plant_canary(data) >= 1
            run_training(data, tiny_teacher_config(**QUICK_TEACHER), teacher)
        else:
            shutil.copytree(tiny_teachers[base], teacher)
        out[name] = (data, teacher)
    return out


@pytest.mark.skipif(importlib.util.find_spec("ray") is None and not os.environ.get("CI"),
                    reason="ray not installed (pip install -e '.[simulation]'; scripts/setup.sh "
                           "installs it, and with CI set the test runs and fails without it)")
def test_twelve_virtual_sites_on_ray_keep_data_private_and_logs_verifiable(
        tiny_sites: dict, tiny_teachers: dict, tmp_path: Path) -> None:
    from common.audit.keys import load_public_key
    from common.audit.log import verify_log
    from coordinator.distill.proxy import load_proxy
    from coordinator.topology.env import SiteNode
    from coordinator.topology.ray_engine import site_keys_dir
    from coordinator.topology.simulate import simulate_ray

    sites = _virtual_sites(tiny_sites, tiny_teachers, tmp_path / "sites")
    config = experiment_toml(tmp_path, "ray", tiny_sites["proxy"], sites, min_sites=N_SITES,
                             student={"augment": NO_AUGMENT}, kd={"temperature": 3.0})
    work = tmp_path / "work"
    rc = simulate_ray([SiteNode(n, d, t) for n, (d, t) in sites.items()], config, work,
                      {"timeout": 300.0, "chunk-size": 48}, timeout=600.0,
                      capture=tmp_path / "capture")
    log = (work / "logs" / "coordinator.log").read_text(errors="replace")
    assert rc == 0, log[-4000:]
    from coordinator.distill.sites import RunStatus

    status = RunStatus.read(tmp_path / "exp")
    assert status is not None and status.ok and status.missing == []
    assert list(status.sites) == sorted(sites)
    (row,) = json.loads((tmp_path / "exp" / "results.json").read_text())["rows"]
    assert row["teachers"] == sorted(sites) and set(row["sites"]) == set(sites)
    assert "query round: 2 chunk(s) x 12 site(s), window 1" in log  # 96 slices / 48

    captured = {p.name: p.read_bytes() for p in (tmp_path / "capture").iterdir()}
    into = b"|".join(v for k, v in captured.items() if k.endswith(".in"))
    out = b"|".join(v for k, v in captured.items() if k.endswith(".out"))
    assert len(captured) == 2 * N_SITES and len(out) > 100_000
    images = load_proxy(tiny_sites["proxy"], 32).images  # positive control: the tap sees
    assert images[3, 0, 16, :].tobytes() in into  # the proxy slices sent to the sites
    for pattern in (CANARY.tobytes(), CANARY.astype(np.float16).tobytes(),
                    CANARY[:8].tobytes(), CANARY[8:].astype(np.float16).tobytes()):
        assert pattern not in out, "private canary bytes left a virtual site"

    audit = tmp_path / "exp" / "audit"
    assert verify_log(audit / "coordinator.jsonl", load_public_key(audit / "coordinator.pub")).ok
    coord = read_jsonl(audit / "coordinator.jsonl")
    for name in sites:
        site_log = work / "sites" / name / "audit" / "egress.jsonl"
        assert verify_log(site_log, load_public_key(site_keys_dir(work) / f"{name}.pub")).ok
        sent = [e for e in read_jsonl(site_log) if e["decision"] == "sent"]
        got = [e for e in coord if e["direction"] == "in" and e["decision"] == "received"
               and e["config"].get("site_name") == name]
        assert len(sent) == len(got) == 4  # train + 2 query chunks + evaluate
        assert sorted(e["entry_hash"] for e in sent) == sorted(e["config"]["receipt"]
                                                              for e in got)
    receipts = read_jsonl(audit / "receipts.jsonl")
    assert len(receipts) == 4 * N_SITES and all(r["verified"] for r in receipts)


def test_the_runtime_may_run_one_message_per_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's runtime builds ``ThreadPoolExecutor()`` (6 threads on 2 cores); after
    ``lift_worker_cap`` it gets room for one worker per actor, idempotently."""
    pytest.importorskip("ray")
    from concurrent.futures import ThreadPoolExecutor

    from flwr.server.superlink.fleet.vce import vce_api

    from coordinator.topology.ray_engine import MAX_SIM_WORKERS, lift_worker_cap

    monkeypatch.setattr(vce_api, "ThreadPoolExecutor", ThreadPoolExecutor)
    lift_worker_cap()
    lift_worker_cap()
    with vce_api.ThreadPoolExecutor() as pool:
        assert pool._max_workers == MAX_SIM_WORKERS > (os.cpu_count() or 1) + 4
    monkeypatch.setattr(vce_api, "ThreadPoolExecutor", object)
    with pytest.raises(RuntimeError, match="lift_worker_cap"):
        lift_worker_cap()
