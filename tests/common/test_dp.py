"""DP accounting: the dp-accounting RDP accountant, cross-checked against the closed form."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from common.audit.dp import (
    compose_gaussian,
    dp_accounting,
    dp_epsilon,
    gaussian_rdp,
    rdp_to_dp,
    release_sensitivity,
)

Q = "query.teacher_outputs"


def test_rdp_accountant_matches_the_closed_form_gaussian_rdp() -> None:
    # sigma 10, Delta sqrt(2), k = 10 releases, delta 1e-5. Closed form: RDP(alpha) =
    # k alpha Delta^2 / (2 sigma^2) = 0.1 alpha; at the accountant's optimal order alpha = 10.6:
    # 1.06 + ln(1 - 1/10.6) - ln(1e-5 * 10.6) / 9.6 = 1.06 - 0.0990909 + 0.9533408 = 1.9142499
    eps, order = compose_gaussian([(10.0, math.sqrt(2), 10)], 1e-5)
    assert order == pytest.approx(10.6)
    assert gaussian_rdp(10.0, math.sqrt(2), 10, 10.6) == pytest.approx(1.06)
    assert eps == pytest.approx(1.9142499, abs=1e-6)
    assert eps == pytest.approx(rdp_to_dp(1.06, 10.6, 1e-5), abs=1e-12)
    # the same minimum over the accountant's orders, computed from the closed form alone
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

    closed = min(rdp_to_dp(gaussian_rdp(10.0, math.sqrt(2), 10, a), a, 1e-5)
                 for a in DEFAULT_RDP_ORDERS if a > 1.01)
    assert eps == pytest.approx(closed, rel=1e-9)
    # standard conversion (Mironov Prop. 3), continuous optimum: c + 2 sqrt(c ln(1/delta)) with
    # c = 0.1: 0.1 + 2 sqrt(1.1512925) = 2.2459660 >= the improved conversion; the old classic
    # bound composed linearly gave 10 * 0.6851589 = 6.851589
    assert 0.1 + 2 * math.sqrt(0.1 * math.log(1e5)) == pytest.approx(2.2459660, abs=1e-6)
    assert eps < 2.2459660 < 6.851589


def test_dp_epsilon_is_finite_where_the_old_bound_said_inf() -> None:
    # sigma 1, Delta 1: the classic per-release bound was 4.84 > 1, so the old code said inf
    assert math.isfinite(dp_epsilon(1.0, 1.0, 1e-5, 1))
    delta64 = math.sqrt(2 * 64 * 64 + 2 * 32 * 32 + 2 * 8 * 8 + 4 * 2)  # 64 px reply: 101.86
    eps = dp_epsilon(0.05, delta64, 1e-5, 1000)
    assert math.isfinite(eps) and eps > 1e9  # finite, and honestly huge at a useful sigma
    by_sigma = [dp_epsilon(s, 1.0, 1e-5, 10) for s in (5.0, 10.0, 20.0, 40.0)]
    assert by_sigma == sorted(by_sigma, reverse=True)
    by_n = [dp_epsilon(20.0, 1.0, 1e-5, n) for n in (1, 10, 100, 1000)]
    assert by_n == sorted(by_n) and by_n[-1] < 1000 * by_n[0]  # sublinear composition
    assert dp_epsilon(10.0, math.inf, 1e-5, 3) == math.inf
    assert dp_epsilon(10.0, 1.0, 1e-5, 0) == 0.0
    with pytest.raises(ValueError, match="sigma > 0"):
        dp_epsilon(0.0, 1.0, 1e-5, 1)


def test_release_sensitivity_hand_computed() -> None:
    from common.audit.entries import digest_arrays

    n = 3
    arrays = digest_arrays({"logits": np.zeros((n, 2, 4, 4), np.float16),
                            "at_early": np.zeros((n, 2, 2), np.float16),
                            "at_deep": np.zeros((n, 1, 1), np.float16),
                            "rc_early": np.zeros(n, np.float32),
                            "rc_deep": np.zeros(n, np.float32)})
    # probs 2 * 16 pixels = 32; maps 2 * 4 + 2 * 1 = 10; cosines 4 * 2 = 8 -> sqrt(50)
    assert release_sensitivity(arrays, {"noise_on": "probs"}) == pytest.approx(math.sqrt(50))
    ds = digest_arrays({"logits_ds": np.zeros((n, 2, 2, 2), np.float16)})  # 4 pooled pixels
    assert release_sensitivity(ds, {}) == pytest.approx(math.sqrt(8))
    u8 = digest_arrays({"probs_u8": np.zeros((n, 1, 4, 4), np.uint8)})  # K-1 channels, 16 px
    assert release_sensitivity(u8, {}) == pytest.approx(math.sqrt(32))
    assert release_sensitivity(arrays, {"noise_on": "logits"}) == math.inf
    assert release_sensitivity(arrays, {"at_form": "paper"}) == math.inf
    assert release_sensitivity([], {}) == math.inf


def test_dp_accounting_per_run_from_the_log(tmp_path: Path) -> None:
    from common.audit.log import AuditLog, read_entries
    from common.audit.report import site_report

    log = AuditLog(tmp_path / "egress.jsonl")
    arrays = {"probs_u8": np.zeros((1, 1, 1, 1), np.uint8)}  # sensitivity sqrt(2) per slice
    for run, n, sigma in (("r1", 4, 10.0), ("r1", 6, 10.0), ("r2", 5, 0.0), ("r4", 5, 10.0)):
        log.append(run_id=run, peer="c", direction="out", msg_type=Q, arrays=arrays,
                   config={"noise_sigma": sigma, "n": n})
    dp1, dp4, total = site_report(tmp_path / "egress.jsonl")["dp"]  # r2: no noise, not listed
    assert (dp1["run_id"], dp1["slices"], dp1["sigma"]) == ("r1", 10, 10.0)
    assert dp1["sensitivity"] == pytest.approx(math.sqrt(2)) and dp1["delta"] == 1e-5
    assert dp1["epsilon"] == pytest.approx(1.9142499, abs=1e-6)  # the closed-form case above
    assert (dp4["run_id"], dp4["slices"]) == ("r4", 5)
    # all runs: 15 slices; alpha 8.9: 1.335 + ln(7.9/8.9) - ln(8.9e-5)/7.9
    #   = 1.335 - 0.1191903 + 1.1806170 = 2.3964267 (accountant: 2.3964285)
    assert (total["run_id"], total["slices"]) == ("(all runs)", 15)
    assert total["epsilon"] == pytest.approx(2.3964285, abs=1e-5) and total["rdp_order"] == 8.9
    log.append(run_id="r3", peer="c", direction="out", msg_type=Q, arrays=arrays,
               config={"noise_sigma": 10.0, "noise_on": "logits", "n": 2})
    rows = dp_accounting([e for _, e in read_entries(tmp_path / "egress.jsonl")])
    assert rows[1]["run_id"] == "r3" and rows[1]["epsilon"] == math.inf  # logit noise: unbounded
    assert rows[-1]["run_id"] == "(all runs)" and rows[-1]["epsilon"] == math.inf
