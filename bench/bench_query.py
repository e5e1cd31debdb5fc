"""Query round vs number of sites, over real Flower on 127.0.0.1.

``python -m bench.bench_query --sites 1 3 12 --modes lockstep pipelined --engine processes``
builds 3 phantom sites and 3 barely trained tiny_unet teachers once (``--base``), gives every
virtual site its own copy of one of them (site i: style i % 3), and runs the whole federated
experiment with ``coordinator simulate`` (``--insecure``; train round = teachers already there,
query round, a 1-epoch 32 px student, evaluate round) per (engine, mode, sites). Recorded per
run: the query round's wall time (the ServerApp's ``query round: ... s`` log line), the run's
wall time, the peak total RSS of every process under this one (sampled every 0.5 s), and the
per-site compute of the query round measured in this process (the same ``handle_query`` calls
on the same chunks, models loaded once, no Flower). Modes: ``lockstep`` = ``query-window 0``
(one ``send_and_receive`` per chunk), ``pipelined`` = ``query-window 4``.
Results: ``bench/results/query_<engine>.json`` (one row per run, appended by key).

``--emulate-s-per-slice S`` holds per-site compute equal as if every site had its own
accelerator: each virtual site's teacher becomes ``emulated_accelerator``
(:mod:`bench.emulated_models`: the same tiny_unet plus S s per slice on a per-site lock, no CPU;
registered in the site processes through :func:`bench.emulated_models.register_in_children`),
so 12 sites' teacher time runs in parallel on a 2-core machine; the row then records
``ideal_s`` = one site's emulated compute (slices x S, served one chunk at a time) and
``query_round_s / ideal_s``. Results: ``bench/results/query_<engine>_emulated.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "results"
STYLES = "ABC"
WINDOW = {"lockstep": 0, "pipelined": 4}


def build_base(base: Path, proxy_cases: int) -> dict[str, Path]:
    """3 phantom sites + a proxy set + 3 tiny teachers under ``base`` (made once)."""
    from common.data.phantom import make_phantom, make_proxy
    from site_node.train import run_training
    from tests._helpers import QUICK_TEACHER, tiny_teacher_config

    paths = {"proxy": base / "proxy"}
    if not paths["proxy"].exists():
        make_proxy(paths["proxy"], n_cases=proxy_cases, seed=500, shape=(16, 64, 64))
    for i, s in enumerate(STYLES):
        data, teacher = base / f"data_{s}", base / f"teacher_{s}"
        if not data.exists():
            make_phantom(data, "prostate", s, 12, seed=10 + i, shape=(16, 64, 64))
        if not (teacher / "teacher.json").exists():
            run_training(data, tiny_teacher_config(**QUICK_TEACHER), teacher)
        paths[f"data_{s}"], paths[f"teacher_{s}"] = data, teacher
    return paths


def make_sites(base: dict[str, Path], n: int, root: Path) -> dict[str, tuple[Path, Path]]:
    """``n`` virtual sites, each with its own copy of a phantom data set and teacher."""
    sites = {}
    for i in range(n):
        s, name = STYLES[i % 3], f"site_{i:02d}"
        data, teacher = root / name / "data", root / name / "teacher"
        if not data.exists():
            shutil.copytree(base[f"data_{s}"], data)
            shutil.copytree(base[f"teacher_{s}"], teacher)
        sites[name] = (data, teacher)
    return sites


COORDINATOR_CMD = ("flwr-serverapp", "coordinator.topology.ray_engine")  # the ServerApp's process


class RssSampler(threading.Thread):
    """Peak summed RSS of every descendant of this process, and of the coordinator's own
    process (the ServerApp: ``flwr-serverapp`` or the Ray engine's driver), from /proc."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.coordinator, self.stop = 0, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            rss = tree_rss(os.getpid())
            self.peak = max(self.peak, sum(rss.values()))
            self.coordinator = max(self.coordinator, sum(
                v for pid, v in rss.items() if any(c in _cmdline(pid) for c in COORDINATOR_CMD)))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def tree_rss(root: int) -> dict[int, int]:
    """RSS in bytes of each of ``root``'s descendants (not ``root`` itself)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            pages = int((d / "statm").read_text().split()[1])
            rss[int(d.name)] = pages * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    inside, out = {root}, {}
    changed = True
    while changed:
        changed = False
        for pid, pp in parent.items():
            if pp in inside and pid not in inside:
                inside.add(pid)
                out[pid] = rss.get(pid, 0)
                changed = True
    return out


def emulate_accelerators(sites: dict[str, tuple[Path, Path]], s_per_slice: float) -> None:
    """Turn each site's teacher checkpoint into ``emulated_accelerator`` with its own lock."""
    import torch

    from site_node.teacher_versions import serving_dir

    for _data, teacher in sites.values():
        best = serving_dir(teacher) / "best.pt"
        ckpt = torch.load(best, map_location="cpu", weights_only=False)
        ckpt["model_name"] = "emulated_accelerator"
        ckpt["model_kwargs"] = {**ckpt["model_kwargs"], "seconds_per_slice": s_per_slice,
                                "lock_path": str(teacher.parent / "accelerator.lock")}
        torch.save(ckpt, best)


def site_compute(base: dict[str, Path], proxy: Path, size: int, chunk: int) -> float:
    """Seconds one site's teacher needs for the whole query round (models loaded, no Flower)."""
    import numpy as np

    from common.protocol import QueryConfig
    from coordinator.distill.proxy import load_proxy
    from coordinator.fed_query import chunks
    from site_node.app import NodeSettings, handle_query

    p = load_proxy(proxy, size)
    node = NodeSettings.model_validate({"data-path": base["data_A"], "site-name": "site_a",
                                        "teacher-dir": base["teacher_A"]})
    parts = chunks(len(p), chunk)
    qc = [QueryConfig(run_id="1", chunk=i, n_chunks=len(parts), size=size,
                      slice_hashes=p.hashes[sl], plan_json=p.plan.model_dump_json()
                      if p.plan else "") for i, sl in enumerate(parts)]
    handle_query(node, qc[0], p.images[parts[0]], p.masks[parts[0]])  # warm up
    t0 = time.perf_counter()
    for q, sl in zip(qc, parts, strict=True):
        handle_query(node, q, np.ascontiguousarray(p.images[sl]), p.masks[sl])
    return time.perf_counter() - t0


def run_one(engine: str, mode: str, n: int, base: dict[str, Path], work: Path,
            chunk: int, opts: argparse.Namespace) -> dict[str, Any]:
    """One federated run; its timings and peak RSS."""
    from coordinator.topology.simulate import SiteNode, simulate, simulate_ray
    from tests._helpers import NO_AUGMENT, experiment_toml

    root = work / f"{engine}_{mode}_{n}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    emulate = opts.emulate_s_per_slice
    sites = make_sites(base, n, work / ("sites_emulated" if emulate else "sites"))
    if emulate:
        from bench.emulated_models import register_in_children

        emulate_accelerators(sites, emulate)
        register_in_children(work / "emulated_hook")  # the site processes register the model
    config = experiment_toml(root, "bench", base["proxy"], sites, student={"augment": NO_AUGMENT})
    nodes = [SiteNode(k, d, t) for k, (d, t) in sites.items()]
    window = 1 if engine == "ray" and mode == "pipelined" else WINDOW[mode]  # ray's default
    window = opts.window if opts.window is not None and mode == "pipelined" else window
    rc_values = {"timeout": 600.0, "chunk-size": chunk, "query-window": window}
    sampler, t0 = RssSampler(), time.perf_counter()
    sampler.start()
    if engine == "ray":
        rc = simulate_ray(nodes, config, root / "work", rc_values, timeout=1500.0,
                          client_cpus=opts.client_cpus)
    else:
        rc = simulate(nodes, config, root / "work", rc_values, timeout=1500.0, insecure=True)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    log = (root / "work" / "logs" / "coordinator.log").read_text(errors="replace")
    m = re.search(r"query round: (\d+) chunk\(s\) x (\d+) site\(s\), window \d+: ([\d.]+) s", log)
    return {"engine": engine, "mode": mode, "sites": n, "rc": rc, "run_wall_s": round(wall, 2),
            "window": window, "chunk_size": chunk, "client_cpus": opts.client_cpus,
            "emulate_s_per_slice": emulate,
            "query_round_s": float(m.group(3)) if m else None,
            "chunks": int(m.group(1)) if m else None,
            "sites_answered": int(m.group(2)) if m else None,
            "peak_rss_total_mb": round(sampler.peak / 2**20, 1),
            "peak_rss_coordinator_mb": round(sampler.coordinator / 2**20, 1)}


def row_key(r: dict[str, Any]) -> tuple:
    """Rows are replaced by engine, mode, sites and the knobs that change the round."""
    return (r["engine"], r["mode"], r["sites"], r.get("chunk_size"), r.get("window"),
            r.get("client_cpus"), r.get("worker_cap"))


def add_ideal(row: dict[str, Any], slices: int, s_per_slice: float) -> None:
    """Emulated runs: one site's accelerator time (``ideal_s``) and the round's ratio to it."""
    if s_per_slice and row.get("query_round_s"):
        row["ideal_s"] = round(slices * s_per_slice, 2)
        row["round_over_ideal"] = round(row["query_round_s"] / row["ideal_s"], 3)


STAMP = r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d) "


def clientapp_query_seconds(logs: Path) -> list[float]:
    """Processes engine: seconds of each query message's ClientApp process, from its start
    line ("FAB ... checked", after Python/Flower imports) to its reply line ("query chunk"),
    read from the site logs (1 s resolution; a lower bound on a site's time per chunk)."""
    from datetime import datetime

    out = []
    for f in sorted(logs.glob("site-*.log")):
        start = None
        for line in f.read_text(errors="replace").splitlines():
            m = re.match(STAMP, line)
            if m and "FAB" in line and "checked" in line:
                start = datetime.fromisoformat(m.group(1))
            elif m and "query chunk" in line and start is not None:
                out.append((datetime.fromisoformat(m.group(1)) - start).total_seconds())
                start = None
    return out


def analyse(work: Path) -> None:
    """Add the ClientApp seconds of the query messages to the processes rows."""
    out = OUT / "query_processes.json"
    doc = json.loads(out.read_text())
    for row in doc["rows"]:
        secs = clientapp_query_seconds(work / f"processes_{row['mode']}_{row['sites']}" /
                                       "work" / "logs")
        row["query_clientapp_s_sum"] = sum(secs)
        row["query_clientapp_s_mean"] = round(sum(secs) / len(secs), 2) if secs else None
        row["query_messages"] = len(secs)
    out.write_text(json.dumps(doc, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, nargs="+", default=[1, 3, 12])
    ap.add_argument("--modes", nargs="+", default=["lockstep", "pipelined"], choices=list(WINDOW))
    ap.add_argument("--engine", choices=["processes", "ray"], default="processes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_query"))
    ap.add_argument("--proxy-cases", type=int, default=12, help="16 slices each")
    ap.add_argument("--chunk-size", type=int, default=48)
    ap.add_argument("--emulate-s-per-slice", type=float, default=0.0,
                    help="per-site emulated accelerator seconds per slice (0 = real teachers)")
    ap.add_argument("--window", type=int, default=None, help="query-window of 'pipelined'")
    ap.add_argument("--client-cpus", type=float, default=1.0, help="ray: CPUs per virtual site")
    ap.add_argument("--analyse", action="store_true",
                    help="only add ClientApp seconds to query_processes.json from --work")
    args = ap.parse_args()
    if args.analyse:
        analyse(args.work)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    base = build_base(args.work / "base", args.proxy_cases)
    out = OUT / f"query_{args.engine}{'_emulated' if args.emulate_s_per_slice else ''}.json"
    doc = json.loads(out.read_text()) if out.exists() else {"rows": []}
    doc["site_compute_s"] = round(site_compute(base, base["proxy"], 32, args.chunk_size), 3)
    doc["cpu_count"] = os.cpu_count()
    doc["loadavg_at_start"] = os.getloadavg()
    for n in args.sites:
        for mode in args.modes:
            row = run_one(args.engine, mode, n, base, args.work, args.chunk_size, args)
            add_ideal(row, args.proxy_cases * 16, args.emulate_s_per_slice)
            row["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
            print(json.dumps(row), flush=True)
            doc["rows"] = [r for r in doc["rows"] if row_key(r) != row_key(row)] + [row]
            OUT.mkdir(exist_ok=True)
            out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
