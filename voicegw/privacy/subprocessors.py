"""The sub-processor list (``config/subprocessors.toml``) as frozen records.

Parsing is strict: an unknown key, a wrong type or an unknown purpose is an error
that names the entry and the key, because a typo here silently changes where
callers' data may go.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicegw.privacy.capabilities import DataType, ProviderCapabilities, Purpose


class SubprocessorConfigError(ValueError):
    """The sub-processor list is malformed; the message names the entry and key."""


@dataclass(frozen=True)
class Subprocessor:
    id: str
    name: str
    locations: tuple[str, ...]
    purposes: frozenset[Purpose]
    data_types: frozenset[DataType]
    adapter: str | None = None
    residency_environments: tuple[str, ...] = ()
    encrypted: bool = False
    notes: str = ""


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError("must be a non-empty string")
    return value


def _optional_text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("must be a string")
    return value


def _codes(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise TypeError("must be a non-empty list of strings")
    codes = []
    for item in value:
        if not isinstance(item, str) or not item.isalpha() or not item.islower():
            raise TypeError(f"{item!r} is not a lower-case region code")
        codes.append(item)
    return tuple(codes)


def _optional_codes(value: object) -> tuple[str, ...]:
    return _codes(value) if value != [] else ()


def _enum_set(enum: type[Purpose] | type[DataType]) -> Callable[[object], frozenset[Any]]:
    def parse(value: object) -> frozenset[Any]:
        if not isinstance(value, list) or not value:
            raise TypeError("must be a non-empty list of strings")
        try:
            return frozenset(enum(item) for item in value)
        except ValueError:
            allowed = ", ".join(m.value for m in enum)
            raise ValueError(f"unknown value in {value!r}; allowed: {allowed}") from None

    return parse


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("must be true or false")
    return value


#: key → (required, parser); the field name is the key.
_FIELDS: dict[str, tuple[bool, Callable[[object], object]]] = {
    "name": (True, _text),
    "locations": (True, _codes),
    "purposes": (True, _enum_set(Purpose)),
    "data_types": (True, _enum_set(DataType)),
    "adapter": (False, _text),
    "residency_environments": (False, _optional_codes),
    "encrypted": (False, _flag),
    "notes": (False, _optional_text),
}


def _parse_entry(entry_id: str, raw: object) -> Subprocessor:
    where = f"[subprocessor.{entry_id}]"
    if not isinstance(raw, Mapping):
        raise SubprocessorConfigError(f"{where}: must be a table")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise SubprocessorConfigError(f"{where}: unknown key {unknown[0]!r}")
    values: dict[str, object] = {}
    for key, (required, parse) in _FIELDS.items():
        if key not in raw:
            if required:
                raise SubprocessorConfigError(f"{where}: missing key {key!r}")
            continue
        try:
            values[key] = parse(raw[key])
        except (TypeError, ValueError) as exc:
            raise SubprocessorConfigError(f"{where} key {key!r}: {exc}") from None
    return Subprocessor(id=entry_id, **values)  # type: ignore[arg-type]


def parse_subprocessors(text: str) -> dict[str, Subprocessor]:
    """Parse the TOML text of a sub-processor list into records keyed by id."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SubprocessorConfigError(f"not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"subprocessor"})
    if unknown:
        raise SubprocessorConfigError(f"unknown top-level table {unknown[0]!r}")
    entries = document.get("subprocessor", {})
    if not isinstance(entries, Mapping) or not entries:
        raise SubprocessorConfigError("no [subprocessor.<id>] entries")
    return {entry_id: _parse_entry(entry_id, raw) for entry_id, raw in entries.items()}


def load_subprocessors(path: str | Path) -> dict[str, Subprocessor]:
    """Read and parse a sub-processor list file."""
    return parse_subprocessors(Path(path).read_text(encoding="utf-8"))


def capabilities_for(
    subprocessor: Subprocessor,
    *,
    name: str,
    purposes: frozenset[Purpose],
    languages: frozenset[str],
    locations: frozenset[str] | None = None,
    data_types: frozenset[DataType] | None = None,
    sample_rates: tuple[int, ...] = (8000, 16000),
    audio_formats: tuple[str, ...] = ("pcm_s16le",),
    streaming: bool = True,
    interim_results: bool = False,
) -> ProviderCapabilities:
    """The capabilities of an adapter for ``subprocessor``, checked against its listing.

    An adapter may narrow what the published list says (one region, fewer
    purposes) but never widen it: a location must be a listed location or a listed
    residency environment, and every purpose and data type must be listed.
    """
    where = f"adapter {name!r} for sub-processor {subprocessor.id!r}"
    chosen = frozenset(subprocessor.locations) if locations is None else locations
    allowed = set(subprocessor.locations) | set(subprocessor.residency_environments)
    if not chosen or not chosen <= allowed:
        raise SubprocessorConfigError(
            f"{where}: locations {sorted(chosen)} not within listed {sorted(allowed)}"
        )
    if not purposes or not purposes <= subprocessor.purposes:
        raise SubprocessorConfigError(f"{where}: purposes {sorted(purposes)} not all listed")
    types = subprocessor.data_types if data_types is None else data_types
    if DataType.ALL not in subprocessor.data_types and not types <= subprocessor.data_types:
        raise SubprocessorConfigError(f"{where}: data types {sorted(types)} not all listed")
    return ProviderCapabilities(
        name=name,
        subprocessor_id=subprocessor.id,
        processing_locations=chosen,
        purposes=purposes,
        data_types=types,
        languages=languages,
        sample_rates=sample_rates,
        audio_formats=audio_formats,
        streaming=streaming,
        interim_results=interim_results,
    )
