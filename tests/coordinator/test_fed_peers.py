"""FedProx and FedBN rows through the FedAvg pipeline in ``--local``
(:mod:`coordinator.baselines.fedavg`, :mod:`coordinator.baselines.fedbn_scores`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from coordinator.baselines.costs import PayloadLog
from coordinator.baselines.fedavg import (
    SiteClient,
    build_strategy,
    fedavg_config,
    local_exchange,
    run_fedavg,
)
from coordinator.distill.config import (
    ExperimentConfig,
    FedAvgSpec,
    FedBNSpec,
    FedProxSpec,
    SiteSpec,
    StudentTrainConfig,
)
from coordinator.distill.proxy import ProxySet

pytestmark = pytest.mark.usefixtures("single_thread")


def _set(n: int, seed: int) -> ProxySet:
    """``n`` random 32 px slices with a square label."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 1, 32, 32)).astype(np.float32)
    masks = np.zeros((n, 32, 32), np.uint8)
    masks[:, 8:20, 8:20] = 1
    return ProxySet(images, masks, [f"c:{i}" for i in range(n)], [str(i) for i in range(n)])


def _init() -> dict[str, torch.Tensor]:
    from common.models import build_model

    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in
            build_model("tiny_unet", in_channels=1, num_classes=2).state_dict().items()}


def _run(tmp: Path, spec: FedAvgSpec, init: dict[str, torch.Tensor] | None = None,
         sizes: tuple[int, ...] = (4, 8), reverse: bool = False
         ) -> tuple[dict[str, torch.Tensor], list[Any], list[Any]]:
    """``spec.rounds`` over in-process sites of ``sizes`` slices (default 4 and 8; batch 4: 1
    and 2 batches per epoch), the replies handed back in reverse order when ``reverse`` (as
    sites that answer in another order); ``(final global state, requests, replies)``."""
    cfg = ExperimentConfig(proxy=tmp, sites=[SiteSpec(name="a", data=tmp, teacher_dir=tmp)],
                           student=StudentTrainConfig(model="tiny_unet", size=32, epochs=1,
                                                      batch_size=4, device="cpu",
                                                      step_size_up=4))
    clients = [SiteClient(f"s{k}", _set(n, k), tmp / f"s{k}") for k, n in enumerate(sizes)]
    inner = local_exchange(clients, torch.device("cpu"))
    requests, replies = [], []

    def exchange(msgs: list[Any]) -> list[Any]:
        requests.extend(msgs)
        out = inner(msgs)
        replies.extend(out)
        return out[::-1] if reverse else out

    final = run_fedavg(exchange, {k + 1: f"s{k}" for k in range(len(sizes))}, init or _init(), spec,
                       fedavg_config(cfg, "", 0, spec=spec), PayloadLog())
    return final, requests, replies


def test_the_average_does_not_depend_on_which_site_answers_first(tmp_path: Path) -> None:
    """Three sites (a float sum of three depends on its order): replies handed back in reverse
    give the same global weights bit for bit, as a federation's arrival order must not matter."""
    sizes = (4, 8, 4)
    ordered, _, _ = _run(tmp_path / "o", FedAvgSpec(rounds=1), sizes=sizes)
    reversed_, _, rep = _run(tmp_path / "r", FedAvgSpec(rounds=1), sizes=sizes, reverse=True)
    assert len(rep) == 3
    assert all(torch.equal(ordered[k], reversed_[k]) for k in ordered)


def test_fedprox_uses_flowers_strategy_and_mu_zero_is_fedavg_bit_for_bit(tmp_path: Path
                                                                         ) -> None:
    from flwr.serverapp.strategy import FedProx

    assert isinstance(build_strategy(FedProxSpec(mu=0.5), 2), FedProx)
    avg, _, _ = _run(tmp_path / "a", FedAvgSpec(rounds=1))
    prox0, req0, _ = _run(tmp_path / "p0", FedProxSpec(rounds=1, mu=0.0))
    assert all(float(m.content["config"]["proximal-mu"]) == 0.0 for m in req0)
    assert avg.keys() == prox0.keys() and all(torch.equal(avg[k], prox0[k]) for k in avg)
    # a strong pull towards the global weights: the round moves them less far than FedAvg
    prox, req, _ = _run(tmp_path / "p", FedProxSpec(rounds=1, mu=1000.0))
    assert float(req[0].content["config"]["proximal-mu"]) == 1000.0
    init = _init()

    def drift(state: dict[str, torch.Tensor]) -> float:
        return sum(float((state[k] - init[k]).norm()) for k in init
                   if init[k].is_floating_point() and "running" not in k)

    assert 0.0 < drift(prox) < drift(avg)


def test_fedbn_sends_no_batchnorm_and_each_site_keeps_its_own(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    from common.fedbn import bn_keys, load_site_bn, without_bn
    from coordinator.baselines import fedbn_scores
    from coordinator.distill.student import DistillData

    keys = bn_keys("tiny_unet")
    final, requests, replies = _run(tmp_path, FedBNSpec(rounds=2),
                                    without_bn(_init(), "tiny_unet"))
    assert set(final) == set(_init()) - keys
    assert all(bool(m.content["config"]["local-bn"]) for m in requests)
    for m in requests:  # BatchNorm floats (4 x 320 channels) and its int64 counters left out
        names = list(m.content["config"]["layout-names"])
        assert not set(names) & keys and len(names) == len(_init()) - 50
    assert all(sorted(m.content["arrays"].keys()) == ["float32"] for m in requests + replies)
    n_float = sum(v.numel() for k, v in _init().items() if v.is_floating_point())
    assert tuple(requests[0].content["arrays"]["float32"].shape) == (n_float - 4 * 320,)
    # each site's own BatchNorm, carried over: 1 then 2 batches per round for s0 and s1
    bn = {s: load_site_bn(tmp_path / s, "local", 0) for s in ("s0", "s1")}
    assert [int(bn[s]["stem.1.num_batches_tracked"]) for s in ("s0", "s1")] == [2, 4]
    assert not torch.equal(bn["s0"]["stem.1.running_mean"], bn["s1"]["stem.1.running_mean"])
    # scoring: site s with the shared weights and s's own BatchNorm
    seen = {}

    def fake_scores(model: Any, data: Any, dev: Any, out: Path) -> tuple[dict, dict]:
        (site,) = data.site_tests
        state = model.state_dict()
        seen[site] = int(state["stem.1.num_batches_tracked"])
        assert torch.equal(state["head.weight"], final["head.weight"])
        return {site: {"dice_mean": 0.5}}, {site: {"case000": {"dice": 0.5}}}

    monkeypatch.setattr(fedbn_scores, "_site_scores", fake_scores)
    from common.models import build_model

    data = DistillData(_set(2, 9), None, ["s0", "s1", "s2"], {"s0": [], "s1": [], "s2": []})
    sites, cases = fedbn_scores.fedbn_site_scores(
        build_model("tiny_unet", in_channels=1, num_classes=2), final, data,
        torch.device("cpu"), tmp_path / "out", tmp_path, 0)
    assert seen == {"s0": 2, "s1": 4}
    assert "trained no FedBN round" in sites["s2"]["error"] and set(cases) == {"s0", "s1"}


def test_the_peer_tables_load_from_toml(tmp_path: Path) -> None:
    from common.config import ConfigError, load_config
    from coordinator.baselines.fedavg import peer_label, peer_specs

    base = (f'proxy = "{tmp_path}"\n[[sites]]\nname = "a"\ndata = "{tmp_path}"\n'
            f'teacher_dir = "{tmp_path}"\n')
    path = tmp_path / "exp.toml"
    path.write_text(base + "[runs.fedprox]\nrounds = 3\nmu = 0.1\n[runs.fedbn]\n")
    cfg = load_config(path, ExperimentConfig)
    assert [(r, type(s).__name__) for r, s in peer_specs(cfg)] == [
        ("fedprox", "FedProxSpec"), ("fedbn", "FedBNSpec")]
    assert cfg.runs.fedbn == FedBNSpec(rounds=5, local_epochs=1, fraction_train=1.0)
    assert peer_label(cfg.runs.fedprox) == "Flower FedProx mu=0.1 3 rounds x 1 ep"  # type: ignore[arg-type]
    path.write_text(base + "[runs.fedbn]\nmu = 0.1\n")  # mu is FedProx's only
    with pytest.raises(ConfigError, match="mu"):
        load_config(path, ExperimentConfig)
