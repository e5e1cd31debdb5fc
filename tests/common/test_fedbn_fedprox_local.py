"""FedProx's proximal term and FedBN's site-kept BatchNorm (:mod:`common.fedavg_local`,
:mod:`common.fedbn`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.fedavg_local import proximal_term
from common.fedbn import bn_keys, bn_path, initial_bn, keep_site_bn, load_site_bn, with_site_bn


def test_the_proximal_terms_gradient_is_mu_times_the_drift() -> None:
    """Two scalar parameters w = (1, -2), global (0.5, 1), mu = 0.2: the term is
    0.1 * (0.5^2 + 3^2) = 0.925 and its gradient mu * (w - w0) = (0.1, -0.6)."""
    w = [torch.tensor(1.0, requires_grad=True), torch.tensor(-2.0, requires_grad=True)]
    w0 = [torch.tensor(0.5), torch.tensor(1.0)]
    term = proximal_term(w, w0, 0.2)
    assert float(term.detach()) == pytest.approx(0.925)
    term.backward()
    assert [float(p.grad) for p in w] == pytest.approx([0.1, -0.6])  # type: ignore[arg-type]
    assert float(proximal_term(w, w0, 0.0).detach()) == 0.0


def test_bn_keys_of_tiny_unet_are_its_ten_batchnorms() -> None:
    """tiny_unet: 5 double convs x 2 BatchNorm2d, each with weight, bias, running_mean,
    running_var and num_batches_tracked = 50 keys; no conv weight among them."""
    keys = bn_keys("tiny_unet")
    assert len(keys) == 50
    assert {"stem.1.weight", "stem.1.running_var", "up2.4.num_batches_tracked"} <= keys
    assert "stem.0.weight" not in keys and "head.weight" not in keys
    init = initial_bn("tiny_unet")
    assert set(init) == keys
    assert float(init["stem.1.weight"].sum()) == 16.0
    assert int(init["stem.1.num_batches_tracked"]) == 0


def _bn_state(value: float) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, value) if v.is_floating_point() else v + int(value)
            for k, v in initial_bn("tiny_unet").items()}


def test_a_sites_bn_is_kept_and_restored_for_its_next_round(tmp_path: Path) -> None:
    shared = {"head.weight": torch.ones(2, 16, 1, 1)}
    full = {**shared, **_bn_state(3.0)}
    sent = keep_site_bn(full, "tiny_unet", tmp_path, "run1", 7)
    assert set(sent) == {"head.weight"}  # the reply carries no BatchNorm entry
    assert bn_path(tmp_path, "run1", 7) == tmp_path / "fedbn" / "run1" / "seed7.pt"
    # round 2: the kept state; round 1: the initial one even though a file exists
    again = with_site_bn(shared, "tiny_unet", tmp_path, "run1", 7, server_round=2)
    assert float(again["stem.1.running_mean"][0]) == 3.0
    assert int(again["stem.1.num_batches_tracked"]) == 3
    fresh = with_site_bn(shared, "tiny_unet", tmp_path, "run1", 7, server_round=1)
    assert float(fresh["stem.1.running_mean"][0]) == 0.0
    # another seed or run id has none: a first round there starts from the initial state
    assert float(with_site_bn(shared, "tiny_unet", tmp_path, "run1", 8, 2)[
        "stem.1.running_var"][0]) == 1.0
    with pytest.raises(FileNotFoundError, match="trained no FedBN round"):
        load_site_bn(tmp_path, "run2", 7)
    with pytest.raises(ValueError, match="not safe as a folder name"):
        bn_path(tmp_path, "../x", 7)
