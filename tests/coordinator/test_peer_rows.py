"""Peer KD methods as rows of the one pipeline: per-row ``label`` / ``kd`` / ``student``
overrides of ``runs.weightings`` (coordinator/distill/config.py) and the rows of
docs/RESEARCHERS.md "Peer methods" (Hinton KD, AT only, EMKD, AMTML-KD) on hand tensors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from common.config import ConfigError, load_config
from common.kd.targets import TeacherTargets
from common.models.base import SegOutput
from coordinator.distill.config import (
    ExperimentConfig,
    KDConfig,
    RunsConfig,
    row_config,
)
from coordinator.distill.student import kd_loss

PEERS: list[dict[str, Any]] = [  # the rows of docs/RESEARCHERS.md "Peer methods"
    {"name": "equal", "label": "hinton_kd", "kd": {"alpha": 0.0}},
    {"name": "equal", "label": "at_only", "kd": {"beta": 0.0, "rc_weight": 0.0}},
    {"name": "equal", "label": "emkd"},
    {"name": "learned", "label": "amtml_kd"},
]
# The hand case: B = 1, K = 2, 2x2 pixels, foreground = top-left pixel, C = 1 features.
# KL (T = 1): student p = (.5, .5) everywhere; teacher A (.25, .75) everywhere, teacher B
# (.75, .25) on the top row, (.25, .75) below. Equal fusion: (.5, .5) on top (KL 0) and
# (.25, .75) below (KL .25 ln .5 + .75 ln 1.5), so the pixel mean is half of that.
KL_HAND = 0.5 * (0.25 * math.log(0.5) + 0.75 * math.log(1.5))
# AT (zagoruyko, sum): student early map (1,0,0,0), deep (.5,.5,.5,.5). Teacher A sends the
# same maps (AT 0); teacher B early (0,1,0,0) (AT 2) and deep (1,0,0,0) (AT 1).
AT_A, AT_B = 0.0, 3.0
# RC: student early f = [[1,0],[0,0]]: p1 = 1/2, p0 = 0 -> rc 0; deep f = 1: p0 = 1, p1 = 1/2
# -> rc 1. Teacher A sends (0, 1) (RC 0); teacher B (0.5, 0): (0-.5)^2 + (1-0)^2 = 1.25.
RC_A, RC_B = 0.0, 1.25


def _hand() -> tuple[SegOutput, torch.Tensor, TeacherTargets]:
    student = SegOutput(torch.zeros(1, 2, 2, 2), (torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]),
                                                  torch.ones(1, 1, 2, 2)))
    p_a = torch.tensor([[0.25, 0.25], [0.25, 0.25]])
    p_b = torch.tensor([[0.75, 0.75], [0.25, 0.25]])
    logits = torch.stack([torch.stack([p.log(), (1 - p).log()]) for p in (p_a, p_b)])
    early = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]])
    deep = torch.tensor([[[0.5, 0.5], [0.5, 0.5]], [[1.0, 0.0], [0.0, 0.0]]])
    teacher = TeacherTargets(logits=logits.unsqueeze(1), at_early=early.unsqueeze(1),
                             at_deep=deep.unsqueeze(1), rc_early=torch.tensor([[0.0], [0.5]]),
                             rc_deep=torch.tensor([[1.0], [0.0]]))
    mask = torch.tensor([[[1, 0], [0, 0]]])
    return student, mask, teacher


def _cfg(tmp_path: Path, weightings: list[dict], **kd: float) -> ExperimentConfig:
    """An experiment whose base KD isolates the KD terms: no Seg loss, T = 1, alpha = 0.3,
    beta = 0.7."""
    return ExperimentConfig.model_validate({
        "proxy": str(tmp_path), "sites": [{"name": "a", "data": "d", "teacher_dir": "t"}],
        "kd": {"alpha": 0.3, "beta": 0.7, "temperature": 1.0, "dice_weight": 0.0,
               "lovasz_weight": 0.0, **kd},
        "runs": {"weightings": weightings}})


def _row_terms(cfg: ExperimentConfig, k: int) -> dict[str, torch.Tensor]:
    student, mask, teacher = _hand()
    loss = kd_loss(row_config(cfg, cfg.runs.weightings[k]).kd)
    return loss(student, mask, teacher, torch.full((1, 2), 0.5), None)


def test_hinton_row_is_the_kl_term_alone(tmp_path: Path) -> None:
    terms = _row_terms(_cfg(tmp_path, PEERS), 0)
    assert float(terms["kl"]) == pytest.approx(KL_HAND, rel=1e-6)
    assert float(terms["total"]) == pytest.approx(0.7 * KL_HAND, rel=1e-6)  # beta * KL only


def test_at_only_row_is_the_attention_term_alone(tmp_path: Path) -> None:
    terms = _row_terms(_cfg(tmp_path, PEERS), 1)
    assert float(terms["mid"]) == pytest.approx((AT_A + AT_B) / 2, rel=1e-6)  # no RC
    assert float(terms["total"]) == pytest.approx(0.3 * (AT_A + AT_B) / 2, rel=1e-6)  # no KL


def test_emkd_row_is_at_plus_rc_with_equal_teacher_weights(tmp_path: Path) -> None:
    terms = _row_terms(_cfg(tmp_path, PEERS), 2)
    mid = ((AT_A + RC_A) + (AT_B + RC_B)) / 2
    assert float(terms["mid"]) == pytest.approx(mid, rel=1e-6)
    assert float(terms["total"]) == pytest.approx(0.3 * mid + 0.7 * KL_HAND, rel=1e-6)


def test_default_rc_weight_keeps_the_loss_bit_identical() -> None:
    """``rc_weight = 1`` is Eq. 4 as before: sum over the taps of ``AT + RC``, same order."""
    from common.kd.losses import AttentionTransfer, RegionContrastLoss

    student, mask, teacher = _hand()
    at, rc = AttentionTransfer(reduction="none"), RegionContrastLoss(reduction="none")
    mids = []
    for j in range(2):
        m = torch.zeros(())
        for f, a, r in ((student.features[0], teacher.at_early[j], teacher.rc_early[j]),
                        (student.features[1], teacher.at_deep[j], teacher.rc_deep[j])):
            m = m + at(f, a) + rc(f, mask, r)
        mids.append(m)
    w = torch.full((1, 2), 0.5)
    expected = (torch.stack(mids, dim=1) * w).sum(dim=1).mean()
    terms = kd_loss(KDConfig(temperature=1.0))(student, mask, teacher, w)
    assert torch.equal(terms["mid"], expected)


def test_rows_without_overrides_keep_config_and_identity(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, [{"name": "equal"}, *PEERS])
    assert row_config(cfg, cfg.runs.weightings[0]) is cfg
    assert cfg.runs.weightings[0].identity() == {"name": "equal", "kwargs": {}}
    assert [f"multi_{w.label}" for w in cfg.runs.weightings] == [
        "multi_equal", "multi_hinton_kd", "multi_at_only", "multi_emkd", "multi_amtml_kd"]
    hinton = row_config(cfg, cfg.runs.weightings[1])
    assert hinton.kd.alpha == 0.0 and hinton.kd.beta == 0.7 and cfg.kd.alpha == 0.3
    assert RunsConfig().weightings[0].label == "inverse_dice_loss"  # defaults unchanged


def _load(tmp_path: Path, row: str) -> ExperimentConfig:
    path = tmp_path / "exp.toml"
    path.write_text('proxy = "p"\n[[sites]]\nname = "a"\ndata = "d"\nteacher_dir = "t"\n'
                    f'[runs]\nweightings = [{{name = "equal"}}, {row}]\n')
    return load_config(path, ExperimentConfig)


@pytest.mark.parametrize(("row", "message"), [
    ('{name = "equal", label = "x", kd = {alpa = 0.0}}',
     "runs.weightings.1: Value error, row 'multi_x': kd.alpa is not a KD setting (valid: "
     "alpha, beta,"),
    ('{name = "equal", label = "x", kd = {beta = -1.0}}',
     "row 'multi_x': kd.beta: Input should be greater than or equal to 0"),
    ('{name = "equal", label = "x", kd = {at_p = 4}}',
     "row 'multi_x': kd.at_p cannot differ per row"),
    ('{name = "equal", label = "x", kd = {teacher_field = "whole"}}',
     "row 'multi_x': kd.teacher_field cannot differ per row"),
    ('{name = "equal", label = "x", student = "enett"}',
     "row 'multi_x': student: unknown model 'enett'; valid: "),
    ('{name = "entropy", label = "equal"}',
     "row 'multi_equal' appears twice in runs.weightings"),
    ('{name = "equal", label = "../x"}', "is not safe as a folder name"),
])
def test_bad_overrides_fail_at_load_naming_the_row(tmp_path: Path, row: str,
                                                   message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, row)
    assert message in str(err.value) and "\n" not in str(err.value)
    if "enett" in row:
        assert "enet, espnet" in str(err.value)  # the valid names are listed


def test_tiny_experiment_with_per_row_student_and_kd(tiny_sites: dict, tiny_teachers: dict,
                                                     tmp_path: Path) -> None:
    """Two paired rows (same seed): an espnet student with the learned weighting and an enet
    student with the Hinton override; both land in results.json with per-case scores, costs,
    the report and the export of the first row."""
    from coordinator.distill import experiment
    from coordinator.export import export_best_multi, result_rows
    from coordinator.local_sites import LocalSites
    from tests._helpers import experiment_toml

    path = experiment_toml(tmp_path, "peers", tiny_sites["proxy"],
                           {n: (tiny_sites[n], tiny_teachers[n]) for n in ("site_a", "site_b")},
                           student={"batch_size": 32, "augment": {"enabled": False}})
    text = path.read_text().replace(
        'weightings = [\n    { name = "inverse_dice_loss" },\n]',
        'weightings = [{ name = "learned", label = "amtml_espnet", student = "espnet" },'
        ' { name = "equal", label = "hinton_kd", kd = { alpha = 0.0 } }]')
    assert "amtml_espnet" in text
    path.write_text(text)
    cfg = load_config(path, ExperimentConfig)
    rows = experiment.run_experiment(cfg, LocalSites(cfg))
    by_run = {r["run"]: r for r in result_rows(cfg.out)}
    assert {"multi_amtml_espnet", "multi_hinton_kd"} <= set(by_run)
    learned, hinton = by_run["multi_amtml_espnet"], by_run["multi_hinton_kd"]
    assert (learned["student"], hinton["student"]) == ("espnet", "enet")
    for row in (learned, hinton):
        assert row["cases"]["site_a"] and row["seed"] == cfg.seed and "cost" in row
    runs = cfg.out / "runs"
    ckpt = torch.load(runs / "multi_amtml_espnet" / "last.pt", weights_only=False)
    assert ckpt["model_name"] == "espnet"
    bias = ckpt["extra"]["weighting"]["teacher_bias"]
    assert bias.shape == (2,) and bool((bias != 0).any())  # trained with the student
    assert json.loads((runs / "multi_hinton_kd" / "identity.json").read_text())[
        "fingerprint"]["kd"]["alpha"] == 0.0
    assert "multi_hinton_kd" in (cfg.out / "results.md").read_text()
    paths = export_best_multi(cfg.out, rows, cfg)
    assert paths is not None
    card = json.loads((cfg.out / "export" / "model_card.json").read_text())
    assert card["run"] == "multi_amtml_espnet" and card["architecture"] == "espnet"


def test_federated_rows_train_and_are_scored_with_their_own_student(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the Grid (``GridSites``) a row's student is rebuilt at the sites by name: its
    evaluate request names the row's model, and the row trains with its own KD settings."""
    from types import SimpleNamespace

    from coordinator import fed_sites
    from coordinator.distill import student
    from coordinator.distill.experiment import train_rows
    from coordinator.distill.student import DistillData, StudentRun

    fitted: list[tuple[str, float]] = []
    scored: list[str] = []

    def fake_fit(run, data, cfg, out):  # type: ignore[no-untyped-def]
        fitted.append((cfg.student.model, cfg.kd.alpha))
        return torch.nn.Linear(1, 1), 1.0

    def fake_eval(grid, roster, name, state, cfg, s, run_id, plan):  # type: ignore[no-untyped-def]
        scored.append(cfg.student.model)
        return ({"site_a": {"dice_mean": 0.5, "voe_mean": 0.5, "hd95_mean": 2.0}},
                {"site_a": {"case000": {"dice": 0.5, "voe": 0.5, "hd95": 2.0}}})

    monkeypatch.setattr(student, "_fit", fake_fit)
    monkeypatch.setattr(student, "run_fingerprint", lambda *a: "fp")
    monkeypatch.setattr(student, "claim_run_folder", lambda out, fp, ep: fp)
    monkeypatch.setattr(fed_sites, "eval_round", fake_eval)
    cfg = _cfg(tmp_path, [{"name": "equal"},
                          {"name": "equal", "label": "b", "student": "espnet",
                           "kd": {"alpha": 0.0}}])
    settings = SimpleNamespace(chunk_size=8, query_window=1, timeout=1.0, trail=None)
    sites = fed_sites.GridSites(None, settings, "r", cfg)  # type: ignore[arg-type]
    proxy = SimpleNamespace(plan=None)
    data = DistillData(proxy, None, ["site_a"], {},  # type: ignore[arg-type]
                       scorer=sites.scorer(cfg, proxy))  # type: ignore[arg-type]
    runs = [StudentRun(f"multi_{w.label}", [0], w) for w in cfg.runs.weightings]
    rows = train_rows(runs, cfg, sites, data, tmp_path)
    DEFAULT = "lraspp_mobilenet_v3_large"  # [student] model by default
    assert fitted == [(DEFAULT, 0.3), ("espnet", 0.0)]
    assert scored == [DEFAULT, "espnet"]
    assert [r["student"] for r in rows] == [DEFAULT, "espnet"]
    assert [r["run"] for r in rows] == ["multi_equal", "multi_b"]


def test_the_documented_peer_rows_load(tmp_path: Path) -> None:
    """The TOML of docs/RESEARCHERS.md "Peer methods" is a valid config, with these rows."""
    import re

    doc = (Path(__file__).parents[2] / "docs" / "RESEARCHERS.md").read_text()
    section = doc[doc.index("### Peer methods"):]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    path = tmp_path / "exp.toml"
    path.write_text('proxy = "p"\n[[sites]]\nname = "a"\ndata = "d"\nteacher_dir = "t"\n'
                    + block.group(1))
    rows = load_config(path, ExperimentConfig).runs.weightings
    assert [w.model_dump(exclude_defaults=True, by_alias=True) for w in rows[1:5]] == PEERS
    assert rows[5].student == "espnet" and rows[5].label == "mtkd_espnet"
