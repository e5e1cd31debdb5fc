"""``[kd] teacher_field``: whole-field answers never share a cache entry with centre-tile ones,
and the default leaves earlier run folders' identities alone."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from coordinator.distill.config import ExperimentConfig
from coordinator.distill.identity import _kd
from coordinator.fed_query import fed_cache_key


def _cfg(tmp_path: Path, **kd: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "proxy": tmp_path / "proxy", "kd": kd,
        "sites": [{"name": "a", "data": tmp_path / "a", "teacher_dir": tmp_path / "ta"}]})


def test_whole_field_answers_have_their_own_cache_key(tmp_path: Path) -> None:
    proxy: Any = SimpleNamespace(digest="d" * 64)
    centre, whole = _cfg(tmp_path), _cfg(tmp_path, teacher_field="whole")
    assert fed_cache_key(proxy, centre, 0.8) != fed_cache_key(proxy, whole, 0.8)
    assert fed_cache_key(proxy, centre, 0.8) == fed_cache_key(proxy, _cfg(tmp_path), 0.8)


def test_the_default_is_not_in_the_run_identity(tmp_path: Path) -> None:
    assert "teacher_field" not in _kd(_cfg(tmp_path))
    assert _kd(_cfg(tmp_path, teacher_field="whole"))["teacher_field"] == "whole"
