"""One tiny registry class, instantiated once per pluggable kind (models, losses, weightings).

Usage::

    MODELS: Registry[nn.Module] = Registry("model")
    register_model = MODELS.register

    @register_model("enet")
    class ENet(nn.Module): ...

    net = MODELS.build("enet", num_classes=2)

Nothing is discovered from the filesystem: an entry exists only if its module was imported
and its decorator ran. Each registry's package ``__init__`` imports its members explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class RegistryError(KeyError):
    """Unknown or duplicate registry name. The message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


class Registry(Generic[T]):
    """Name -> factory map for one kind of pluggable component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator registering a class or factory function under ``name``."""

        def deco(obj: F) -> F:
            if name in self._entries:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory for ``name``; the error lists the valid names."""
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "(none registered)"
            raise RegistryError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def build(self, name: str, **kwargs: Any) -> T:
        """Instantiate the entry ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
