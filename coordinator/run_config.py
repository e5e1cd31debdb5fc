"""The ServerApp's run config as one typed model; its defaults live only in the Flower app.

The keys and their defaults are declared once, in ``[tool.flwr.app.config]`` of
``deploy/flwr_app/pyproject.toml``: Flower fills ``context.run_config`` from there (plus
``flwr run --run-config`` overrides), so :class:`RunConfig` declares types and bounds but no
defaults, and the CLI (:mod:`coordinator.federated_cli`) starts from
:func:`coordinator.topology.env.app_defaults` too.
A missing key, an unknown key or a wrong type is one line naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import ConfigDict, Field, ValidationError, field_validator

from common.config import StrictModel, first_error

R = TypeVar("R", bound="RunConfig")


def _dashed(name: str) -> str:
    return name.replace("_", "-")


class RunConfig(StrictModel):
    """``context.run_config`` of one federated experiment (dash-separated keys)."""

    model_config = ConfigDict(alias_generator=_dashed, populate_by_name=True)

    config_path: Path = Field(description="ExperimentConfig TOML/YAML on the SuperLink's machine")
    min_sites: int = Field(ge=0, le=1000,
                           description="fewest live sites; 0 = the config's min_sites")
    expected_sites: int = Field(ge=0, le=1000,
                                description="nodes to wait for; 0 = sites in the config")
    timeout: float = Field(gt=0, le=1e7, description="seconds per round (and for nodes to connect)")
    train: bool = Field(description="send `train` first (site names, teacher val Dice)")
    chunk_size: int = Field(ge=1, le=100_000, description="proxy slices per query message")
    query_window: int = Field(ge=0, le=64, description="query chunks in flight per site "
                                                       "(0 = lockstep, one chunk at a time)")
    out: str = Field(description='override the experiment\'s out folder ("" = keep)')
    site_keys_dir: str = Field(description='<site>.pub receipt keys ("" = unverified)')

    @field_validator("config_path", mode="before")
    @classmethod
    def _not_empty(cls, v: Any) -> Any:
        if str(v) == "":
            raise ValueError("config-path is empty: pass --run-config config-path=...")
        return v

    @classmethod
    def from_run_config(cls: type[R], rc: dict[str, Any], who: str = "run config") -> R:
        """Validate ``rc``; the first problem becomes one ``ValueError`` line naming the key."""
        try:
            return cls.model_validate(rc)
        except ValidationError as exc:
            loc, msg = first_error(exc)
            raise ValueError(f"{who}: {loc}: {msg}") from None

    def to_run_config(self) -> dict[str, object]:
        """The dash-separated mapping Flower expects (``Path`` as ``str``)."""
        return self.model_dump(mode="json", by_alias=True)
