"""Typed configs at every boundary: registry names checked at load, Flower configs as models,
run-config defaults from one place, TOML written by tomli-w."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from common.config import ConfigError, load_config


def _experiment(tmp_path: Path, student_model: str = "enet", weighting: str = "equal") -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(f'proxy = "p"\n[[sites]]\nname = "a"\ndata = "d"\nteacher_dir = "t"\n'
                    f'[student]\nmodel = "{student_model}"\n'
                    f'[runs]\nweightings = [{{name = "{weighting}"}}]\n')
    return path


def test_a_typo_in_the_student_model_fails_at_load_listing_valid_names(tmp_path: Path) -> None:
    from coordinator.distill.config import ExperimentConfig

    assert load_config(_experiment(tmp_path), ExperimentConfig).student.model == "enet"
    with pytest.raises(ConfigError) as err:
        load_config(_experiment(tmp_path, student_model="enett"), ExperimentConfig)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'exp.toml'}: student.model: ")
    assert "unknown model 'enett'; valid: " in msg and "enet, espnet" in msg


def test_a_typo_in_a_weighting_fails_at_load_listing_valid_names(tmp_path: Path) -> None:
    from coordinator.distill.config import ExperimentConfig

    with pytest.raises(ConfigError) as err:
        load_config(_experiment(tmp_path, weighting="inverse_dice"), ExperimentConfig)
    msg = str(err.value)
    assert "runs.weightings.0.name" in msg
    assert ("unknown teacher weighting 'inverse_dice'; valid: entropy, equal, fixed, "
            "inverse_dice_loss, learned, paper, select_best") in msg


def test_a_typo_in_the_teacher_model_fails_at_load(tmp_path: Path) -> None:
    from site_node.train_config import TeacherTrainConfig

    path = tmp_path / "teacher.toml"
    path.write_text('model = "deeplabv3_r50"\n')
    # emulated_accelerator is listed only once bench/emulated_models.py was imported (tests/bench)
    with pytest.raises(ConfigError, match=r"model: .*unknown model 'deeplabv3_r50'; valid: "
                                          r"deeplabv3plus_r50, (emulated_accelerator, )?enet"):
        load_config(path, TeacherTrainConfig)


def test_run_config_keys_and_defaults_come_from_the_flower_app() -> None:
    from coordinator.run_config import RunConfig
    from coordinator.server_app import FedSettings
    from coordinator.topology.env import app_defaults

    defaults = app_defaults()
    assert {f.alias for f in RunConfig.model_fields.values()} == set(defaults)
    assert defaults["timeout"] == 300.0 and defaults["chunk-size"] == 256
    s = FedSettings.from_run_config({**defaults, "config-path": "/x/exp.toml"})
    assert (s.config_path, s.timeout, s.chunk_size, s.train, s.trail) == (
        Path("/x/exp.toml"), 300.0, 256, True, None)
    assert s.to_run_config() == {**defaults, "config-path": "/x/exp.toml"}
    with pytest.raises(ValueError, match="run config: config-path: .*config-path is empty"):
        RunConfig.from_run_config(defaults)
    with pytest.raises(ValueError, match="run config: chunk-size: "):
        RunConfig.from_run_config({**defaults, "config-path": "e.toml", "chunk-size": 0})
    with pytest.raises(ValueError, match="run config: chunk_sizes: Extra inputs"):
        RunConfig.from_run_config({**defaults, "config-path": "e.toml", "chunk_sizes": 1})


def test_node_config_is_written_and_read_with_one_model(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    from site_node.node_config import NodeSettings

    node = NodeSettings.model_validate({"data-path": tmp_path / "my data", "teacher-dir": "/t",
                                        "site-name": "site_a", "compression": "int8_probs"})
    back = NodeSettings.from_node_config(parse_config_args([node.to_node_config()]))
    assert back == node and back.data == tmp_path / "my data"
    assert back.codec(4.0).mode == "int8_probs" and back.codec(4.0).temperature == 4.0
    assert back.codec().downsample_factor == 2  # unset: CompressionConfig's default
    with pytest.raises(ValueError, match="node-config: polcy-path: Extra inputs"):
        NodeSettings.from_node_config({**parse_config_args([node.to_node_config()]),
                                       "polcy-path": "/p.toml"})


def test_run_config_file_is_valid_toml(tmp_path: Path) -> None:
    from coordinator.topology.env import run_config_file

    values: dict[str, object] = {"config-path": 'C:\\x "y".toml', "train": False,
                                 "timeout": 30.0, "chunk-size": 48}
    path = run_config_file(tmp_path, values)
    assert tomllib.loads(path.read_text()) == values
    assert "train = false\n" in path.read_text()
