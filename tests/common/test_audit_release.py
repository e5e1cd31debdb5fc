"""An audit that matches the policy: a weight release the site's policy allowed reads as
"released under policy" (what, how often, how many bytes), one it did not allow stays a
violation (short, grouped by kind); the DP guarantee is always stated; the HTML report shows
tables, not raw JSON or walls of names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.audit.log import AuditLog
from common.audit.report import site_report
from common.records import load_or_create_key
from site_node.cli import main as site_main
from site_node.policy import (
    WEIGHT_RELEASE_TYPE,
    WeightReleasePolicy,
    allowed_arrays,
    default_policy,
    release_caps,
)

LAYERS = 100  # 300 parameter arrays per reply, like a real network's state dict


def _weights() -> dict[str, np.ndarray]:
    out = {}
    for i in range(LAYERS):
        out[f"enc.layer{i}.conv.weight"] = np.zeros((4, 4), np.float32)  # 64 B
        out[f"enc.layer{i}.conv.bias"] = np.zeros(4, np.float32)  # 16 B
        out[f"enc.layer{i}.bn.running_mean"] = np.zeros(2, np.float32)  # 8 B
    return out


@pytest.fixture
def fedavg_log(tmp_path: Path) -> Path:
    """A site log with 2 FedAvg rounds (weights sent) and one query answered without noise."""
    state = tmp_path / "state"
    log = AuditLog(state / "audit" / "egress.jsonl",
                   load_or_create_key(state / "audit" / "site.key"))
    for rnd in range(2):
        log.append(run_id="fa", peer="node 1", direction="in", msg_type=WEIGHT_RELEASE_TYPE,
                   decision="received")
        log.append(run_id="fa", peer="node 1", direction="out", msg_type=WEIGHT_RELEASE_TYPE,
                   arrays=_weights(), config={"release": "model weights", "site_name": "a",
                                              "num-examples": 10 + rnd}, decision="sent")
    log.append(run_id="q", peer="node 1", direction="in", msg_type="query.teacher_outputs",
               decision="received")
    log.append(run_id="q", peer="node 1", direction="out", msg_type="query.teacher_outputs",
               arrays={"logits": np.zeros((8, 2, 4, 4), np.float16)},
               config={"noise_sigma": 0.0, "n": 8}, decision="sent")
    return log.path


def _policy_file(tmp_path: Path, allow: bool) -> Path:
    pol = default_policy().model_copy(update={"weight_release": WeightReleasePolicy(
        allow=allow)})
    path = tmp_path / f"policy_{allow}.yaml"
    path.write_text(pol.model_dump_json())
    return path


def test_a_release_the_policy_allowed_is_reported_not_flagged(fedavg_log: Path) -> None:
    pol = default_policy().model_copy(update={"weight_release": WeightReleasePolicy(allow=True)})
    s = site_report(fedavg_log, allowed_arrays(pol), release_caps(pol))
    assert s["violations"] == []
    (rel,) = s["released"]
    per_reply = LAYERS * (64 + 16 + 8)
    assert (rel["msg_type"], rel["replies"], rel["bytes"]) == (WEIGHT_RELEASE_TYPE, 2,
                                                               2 * per_reply)
    assert rel["arrays_per_reply"] == 3 * LAYERS and rel["runs"] == ["fa"]
    assert rel["kinds"] == {"bias": {"count": 100, "bytes": 1600},  # per reply
                            "running_mean": {"count": 100, "bytes": 800},
                            "weight": {"count": 100, "bytes": 6400}}
    assert "released under policy: query.fedavg_train x2, 17,600 B" in s["statement"]
    assert s["dp_statement"] == "DP: no DP noise: ε = ∞ (3 replies with arrays sent without noise)"


def test_site_audit_exits_0_under_the_release_policy_and_1_without(
        fedavg_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pub = fedavg_log.parent / "site.pub"
    argv = ["audit", "--log", str(fedavg_log), "--pub", str(pub)]
    assert site_main([*argv, "--policy", str(_policy_file(tmp_path, True))]) == 0
    out = capsys.readouterr().out
    assert ("released under policy: query.fedavg_train: 2 replies, 17,600 B in all, "
            "300 arrays per reply") in out
    assert "VIOLATION" not in out and "DP: no DP noise: ε = ∞" in out
    assert site_main([*argv, "--policy", str(_policy_file(tmp_path, False))]) == 1
    out = capsys.readouterr().out
    violations = [ln for ln in out.splitlines() if "VIOLATION" in ln]
    assert len(violations) == 2 and all(len(v) < 300 for v in violations)  # no wall of names
    assert "300 arrays (bias x100, running_mean x100, weight x100" in violations[0]


def test_the_html_report_is_tables_grouped_by_kind(fedavg_log: Path, tmp_path: Path) -> None:
    html = tmp_path / "audit.html"
    argv = ["audit", "--log", str(fedavg_log), "--pub", str(fedavg_log.parent / "site.pub"),
            "--policy", str(_policy_file(tmp_path, True)), "--html", str(html)]
    assert site_main(argv) == 0
    page = html.read_text()
    assert "<pre>{" not in page and "Released under policy" in page
    assert "300 arrays, 8.8 kB: bias x100 (1.6 kB), running_mean x100" in page
    assert page.count("enc.layer") == 0  # names grouped, not listed
    assert "no DP noise: ε = ∞" in page and "table-layout:fixed" in page


def test_the_dp_statement_with_noise_gives_the_accountants_epsilon() -> None:
    from common.audit.entries import AuditEntry
    from common.audit.report import dp_statement

    def entry(sigma: float) -> tuple[int, AuditEntry]:
        return 1, AuditEntry.model_validate({
            "seq": 1, "time": "t", "run_id": "r", "peer": "p", "direction": "out",
            "msg_type": "query.teacher_outputs", "decision": "sent",
            "arrays": [{"name": "logits", "dtype": "float16", "shape": [8, 2, 4, 4],
                        "nbytes": 512, "sha256": "0" * 64}],
            "config": {"noise_sigma": sigma}, "prev_hash": "0" * 64, "entry_hash": "0" * 64,
            "reason": None, "signer": "", "signature": ""})

    row = {"epsilon": 1.914, "delta": 1e-5, "slices": 10, "sigma": 10.0, "accountant": "RDP"}
    assert dp_statement([entry(10.0)], [row]) == (
        "DP: ε = 1.914 at δ = 1e-05 over 10 noised slices (σ >= 10, RDP)")
    mixed = dp_statement([entry(10.0), entry(0.0)], [row])
    assert mixed.startswith("DP: no DP guarantee overall: ε = ∞ (1 replies with arrays sent")
