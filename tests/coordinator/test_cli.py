"""``coordinator`` CLI: configs validate, the models table prints, errors are one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import ConfigError, load_config
from coordinator.cli import main as coord_main
from coordinator.distill.config import ExperimentConfig, paper_preset

ROOT = Path(__file__).resolve().parents[2]


def test_demo_config_loads_and_resolves_relative_to_file() -> None:
    path = ROOT / "configs" / "demo_prostate.toml"
    cfg = load_config(path, ExperimentConfig).resolve_paths(path.parent)
    assert [s.name for s in cfg.sites] == ["site_a", "site_b", "site_c"]
    assert cfg.proxy == (ROOT / "demo_out" / "data" / "proxy").resolve()
    assert [w.name for w in cfg.runs.weightings][0] == "inverse_dice_loss"
    paper = paper_preset(cfg)
    assert (paper.student.size, paper.student.epochs, paper.student.max_lr) == (384, 100, 0.01)
    assert paper.kd.alpha == paper.kd.beta == 0.1


def test_unknown_config_key_is_refused_naming_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "exp.toml"
    bad.write_text('proxy = "p"\n[[sites]]\nname="a"\ndata="d"\nteacher_dir="t"\n'
                   '[kd]\nalpha = 0.1\ngamma = 3\n')
    with pytest.raises(ConfigError, match=r"exp\.toml: kd\.gamma"):
        load_config(bad, ExperimentConfig)


def test_duplicate_site_names_refused(tmp_path: Path) -> None:
    bad = tmp_path / "exp.yaml"
    bad.write_text("proxy: p\nsites:\n  - {name: a, data: d, teacher_dir: t}\n"
                   "  - {name: a, data: e, teacher_dir: u}\n")
    with pytest.raises(ConfigError, match="unique"):
        load_config(bad, ExperimentConfig)


def test_models_table_lists_students_and_teachers(capsys: pytest.CaptureFixture[str]) -> None:
    assert coord_main(["models", "--size", "64", "--names", "espnet,enet,fcn_resnet101"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    order = [n for ln in lines for n in ("espnet", "enet", "fcn_resnet101") if f" {n} " in ln]
    assert order == ["espnet", "enet", "fcn_resnet101"]  # ascending params, like Table 2


def test_distill_with_missing_config_is_one_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = coord_main(["distill", "--local", "--config", str(tmp_path / "nope.toml")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nope.toml: config file not found" in err and "\n" not in err
