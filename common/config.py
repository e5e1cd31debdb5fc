"""Load pydantic configuration models from TOML or YAML files.

Configs are explicit: every hyperparameter is a field, unknown keys are refused
(``extra="forbid"``) and there is no environment-variable override. Every way a config file
can be wrong (missing, not UTF-8, malformed TOML/YAML, invalid field) ends in one
:class:`ConfigError` line that names the file.

Names that become parts of paths (site names, run names, run ids) are restricted to
:data:`SafeName` / :data:`RunId`: ASCII letters, digits, ``.``, ``_`` and ``-``, not starting
with a dot, at most :data:`MAX_NAME_LEN` characters, so ``../../x`` can never leave a folder.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

M = TypeVar("M", bound=BaseModel)

MAX_SEED = 2**32 - 1  # numpy's seed range
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]{1,2})?)$"
"""Device names a config may give (``select_device``)."""

MAX_NAME_LEN = 64
_NAME_PATTERN = rf"^[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{MAX_NAME_LEN - 1}}}$"
_NAME_RE = re.compile(_NAME_PATTERN)
SafeName = Annotated[str, StringConstraints(pattern=_NAME_PATTERN)]
"""A non-empty name safe as one path component (site name, run name)."""
RunId = Annotated[str, StringConstraints(pattern=rf"^({_NAME_PATTERN[1:-1]})?$")]
"""Like :data:`SafeName` but may be empty (\"no run id\")."""
_RUN_NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._,()\[\] =+-]{0,127}$"
RunName = Annotated[str, StringConstraints(pattern=_RUN_NAME_PATTERN)]
"""A student run's name (also its folder), e.g. ``multi_fixed([0.5, 0.3, 0.2])_seed1``: no
path separator, no leading dot, at most 128 characters."""


class StrictModel(BaseModel):
    """Base for every config and payload model: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=False, protected_namespaces=())


class ConfigError(ValueError):
    """A config file is missing, unparsable or invalid; the message names the file."""


def safe_name(value: str, what: str = "name") -> str:
    """``value`` if it is a :data:`SafeName`, else a one-line :class:`ConfigError`."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ConfigError(f"{what} {str(value)[:80]!r} is not a safe name (1-{MAX_NAME_LEN} "
                          "of A-Z a-z 0-9 . _ -, not starting with '.')")
    return value


def safe_run_name(value: str) -> str:
    """``value`` if it is a :data:`RunName`, else a one-line :class:`ConfigError`."""
    if not isinstance(value, str) or not re.match(_RUN_NAME_PATTERN, value):
        raise ConfigError(f"run name {str(value)[:80]!r} is not safe as a folder name (no '/', "
                          "no leading '.', at most 128 characters)")
    return value


def _one_line(text: object) -> str:
    """Collapse a (possibly multi-line) parser message into one line."""
    return " ".join(str(text).split())


def _read_text(path: Path) -> str:
    """The file's text as UTF-8; a missing, unreadable or non-UTF-8 file is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {exc.start})") from None


def _parse_yaml(path: Path, text: str) -> dict[str, Any]:
    """YAML via ``safe_load``; the top level must be a mapping."""
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: cannot parse YAML: {_one_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def read_mapping(path: Path) -> dict[str, Any]:
    """Parse a ``.toml``, ``.yaml`` or ``.yml`` file into a dict (YAML via ``safe_load``)."""
    if path.suffix not in {".toml", ".yaml", ".yml"}:
        raise ConfigError(f"{path}: unsupported config suffix {path.suffix!r} "
                          "(use .toml or .yaml)")
    text = _read_text(path)
    if path.suffix != ".toml":
        return _parse_yaml(path, text)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: cannot parse TOML: {_one_line(exc)}") from None


def first_error(exc: ValidationError) -> tuple[str, str]:
    """``(dotted location, message)`` of a validation error's first problem: what every one-line
    config, wire and CLI error reports."""
    err = exc.errors()[0]
    return ".".join(str(p) for p in err["loc"]), str(err["msg"])


def load_config(path: Path, model: type[M]) -> M:
    """Read ``path`` and validate it as ``model``; errors name the file and the field."""
    data = read_mapping(path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        loc, msg = first_error(exc)
        raise ConfigError(f"{path}: {loc}: {_one_line(msg)}") from None


def validated_copy(model: M, update: dict[str, Any], where: str) -> M:
    """``model`` with ``update`` applied *and validated* (``model_copy`` skips validation);
    the first problem is one :class:`ConfigError` line starting with ``where`` (e.g. the
    command-line flag)."""
    try:
        return type(model).model_validate({**model.model_dump(), **update})
    except ValidationError as exc:
        loc, msg = first_error(exc)
        raise ConfigError(f"{where}: {loc}: {_one_line(msg)}") from None
