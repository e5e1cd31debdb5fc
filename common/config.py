"""Load pydantic configuration models from TOML or YAML files.

Configs are explicit: every hyperparameter is a field, unknown keys are refused
(``extra="forbid"``) and there is no environment-variable override.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config and payload model: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=False, protected_namespaces=())


class ConfigError(ValueError):
    """A config file is missing, unparsable or invalid; the message names the file."""


def read_mapping(path: Path) -> dict[str, Any]:
    """Parse a ``.toml``, ``.yaml`` or ``.yml`` file into a dict (YAML via ``safe_load``)."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text) or {}
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: top level must be a mapping")
            return data
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    raise ConfigError(f"{path}: unsupported config suffix {path.suffix!r} (use .toml or .yaml)")


def load_config(path: Path, model: type[M]) -> M:
    """Read ``path`` and validate it as ``model``; errors name the file and the field."""
    data = read_mapping(path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {loc}: {first['msg']}") from exc
