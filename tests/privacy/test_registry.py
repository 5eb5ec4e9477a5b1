"""Registry: providers by name, one registry per kind."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from voicegw.privacy.capabilities import DataType, ProviderCapabilities, Purpose
from voicegw.privacy.registry import DuplicateProviderError, Registry, UnknownProviderError


@dataclass
class Engine:
    capabilities: ProviderCapabilities


def engine(name: str) -> Engine:
    return Engine(
        ProviderCapabilities(
            name=name,
            subprocessor_id=None,
            processing_locations=frozenset(),
            purposes=frozenset({Purpose.ASR}),
            data_types=frozenset({DataType.AUDIO}),
            languages=frozenset({"en"}),
        )
    )


def test_registered_providers_are_found_by_name_and_listed_in_order() -> None:
    registry: Registry[Engine] = Registry("asr")
    first, second = engine("b-engine"), engine("a-engine")
    registry.register(first)
    registry.register(second)
    assert registry.get("a-engine") is second
    assert registry.list() == [first, second]
    assert registry.names() == ["b-engine", "a-engine"]
    assert registry.capabilities() == [first.capabilities, second.capabilities]
    assert "a-engine" in registry and len(registry) == 2


def test_duplicate_names_are_refused_unless_replacing() -> None:
    registry: Registry[Engine] = Registry("tts")
    registry.register(engine("x"))
    with pytest.raises(DuplicateProviderError, match="tts provider 'x'"):
        registry.register(engine("x"))
    replacement = engine("x")
    registry.register(replacement, replace=True)
    assert registry.get("x") is replacement


def test_unknown_names_raise_a_key_error_naming_the_kind() -> None:
    registry: Registry[Engine] = Registry("asr")
    with pytest.raises(UnknownProviderError, match="no asr provider named 'nope'"):
        registry.get("nope")
    with pytest.raises(KeyError):
        registry.unregister("nope")


def test_capabilities_refuse_a_local_engine_with_a_location_and_a_vendor_without() -> None:
    with pytest.raises(ValueError, match="local engine"):
        ProviderCapabilities(
            name="x", subprocessor_id=None, processing_locations=frozenset({"sg"}),
            purposes=frozenset({Purpose.ASR}), data_types=frozenset(), languages=frozenset(),
        )  # fmt: skip
    with pytest.raises(ValueError, match="must declare where"):
        ProviderCapabilities(
            name="x", subprocessor_id="azure", processing_locations=frozenset(),
            purposes=frozenset({Purpose.ASR}), data_types=frozenset(), languages=frozenset(),
        )  # fmt: skip
