"""A registry of providers by name, one per kind (ASR, TTS)."""

from __future__ import annotations

import builtins
from typing import Generic, Protocol, TypeVar

from voicegw.privacy.capabilities import ProviderCapabilities


class HasCapabilities(Protocol):
    @property
    def capabilities(self) -> ProviderCapabilities: ...


P = TypeVar("P", bound=HasCapabilities)


class UnknownProviderError(KeyError):
    """No provider is registered under that name."""


class DuplicateProviderError(ValueError):
    """A provider of that name is already registered."""


class Registry(Generic[P]):
    """Providers keyed by ``capabilities.name``, listed in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, P] = {}

    def register(self, provider: P, *, replace: bool = False) -> None:
        name = provider.capabilities.name
        if name in self._items and not replace:
            raise DuplicateProviderError(f"{self.kind} provider {name!r} is already registered")
        self._items[name] = provider

    def unregister(self, name: str) -> None:
        if self._items.pop(name, None) is None:
            raise UnknownProviderError(f"no {self.kind} provider named {name!r}")

    def get(self, name: str) -> P:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownProviderError(f"no {self.kind} provider named {name!r}") from None

    def list(self) -> list[P]:
        return list(self._items.values())

    def names(self) -> builtins.list[str]:
        return list(self._items)

    def capabilities(self) -> builtins.list[ProviderCapabilities]:
        """The candidates to hand to :func:`voicegw.privacy.selection.select_provider`."""
        return [p.capabilities for p in self._items.values()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
