"""The SuperNode's ``--node-config`` as typed models (dash-separated keys, one line per error).

:class:`EgressConfig` holds the keys of the egress gate (:mod:`site_node.egress`) and reads them
out of the whole node config (other keys ignored); :class:`NodeSettings` is the whole node
config of this site, unknown keys refused (a typo in ``policy-path`` must not silently fall
back to the default policy). Unset codec keys keep the defaults of
:class:`common.compress.CompressionConfig`, their one source. ``site-node run`` writes the
``--node-config`` string from :class:`NodeSettings` (:meth:`NodeSettings.to_node_config`), so
writer and readers share the key names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import ConfigDict, Field, ValidationError

from common.compress import CompressionConfig
from common.config import SafeName, StrictModel, first_error

E = TypeVar("E", bound="EgressConfig")


def _dashed(name: str) -> str:
    return name.replace("_", "-")


class EgressConfig(StrictModel):
    """Egress keys of the node config (all optional); see :mod:`site_node.egress`."""

    model_config = ConfigDict(alias_generator=_dashed, populate_by_name=True, extra="ignore")

    teacher_dir: Path | None = None
    state_dir: Path | None = None  # default <teacher-dir>/site_state
    audit_key: Path | None = None  # default <state-dir>/audit/site.key
    policy_path: Path | None = None  # default: site_node.policy.default_policy()
    coordinator_key: Path | None = None  # pinned coordinator audit public key (PEM)
    compression: str | None = None  # CompressionConfig.mode
    downsample_factor: int | None = None
    noise_sigma: float | None = None
    noise_on: str | None = None
    temperature: float | None = None  # default: the query's KD temperature

    @classmethod
    def from_node_config(cls: type[E], node_config: dict[str, Any]) -> E:
        """Validate ``context.node_config``; the first problem is one ``ValueError`` line."""
        try:
            return cls.model_validate(dict(node_config))
        except ValidationError as exc:
            key, msg = first_error(exc)
            raise ValueError(f"supernode --node-config: {key}: {msg}") from None

    def resolved_state_dir(self) -> Path:
        """``state-dir``, else ``<teacher-dir>/site_state``."""
        if self.state_dir is not None:
            return self.state_dir
        if self.teacher_dir is None:
            raise ValueError("supernode --node-config lacks state-dir (or teacher-dir)")
        return self.teacher_dir / "site_state"

    def codec(self, query_temperature: float = 1.0) -> CompressionConfig:
        """How query logits are encoded: the set keys over :class:`CompressionConfig`'s
        defaults; ``temperature`` defaults to the query's (the student's KD temperature)."""
        keys = {"mode": self.compression, "downsample_factor": self.downsample_factor,
                "noise_sigma": self.noise_sigma, "noise_on": self.noise_on}
        values = {k: v for k, v in keys.items() if v is not None}
        values["temperature"] = (self.temperature if self.temperature is not None
                                 else query_temperature)
        return CompressionConfig.model_validate(values)


class NodeSettings(EgressConfig):
    """The whole node config of one site: its data, teacher folder and name, plus egress keys."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(alias="data-path")
    teacher_dir: Path  # type: ignore[assignment]  # required here
    site_name: SafeName  # 1-64 of A-Z a-z 0-9 . _ -: it names files on both sides

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> NodeSettings:
        """Parse ``data-path``, ``teacher-dir``, ``site-name`` (+ egress keys); a missing or
        unknown key is one clear line."""
        missing = [k for k in ("data-path", "teacher-dir", "site-name") if k not in node_config]
        if missing:
            raise ValueError(f"supernode --node-config lacks {missing}")
        return super().from_node_config(node_config)  # type: ignore[return-value]

    def to_node_config(self) -> str:
        """The ``flower-supernode --node-config`` string (set keys only, TOML-quoted)."""
        items = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return " ".join(f"{k}={_quote(v)}" for k, v in items.items())


def _quote(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int | float):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
