"""The sub-processor list: the shipped file, strict parsing, adapters checked against it."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicegw.privacy.capabilities import DataType, Purpose
from voicegw.privacy.subprocessors import (
    SubprocessorConfigError,
    capabilities_for,
    load_subprocessors,
    parse_subprocessors,
)

SHIPPED = Path(__file__).parents[2] / "config" / "subprocessors.toml"

VALID = """
[subprocessor.acme]
name = "Acme Speech"
locations = ["sg"]
purposes = ["asr"]
data_types = ["audio"]
"""


def test_shipped_list_holds_the_published_sub_processors() -> None:
    listing = load_subprocessors(SHIPPED)
    assert set(listing) == {
        "azure", "elevenlabs", "tencent", "google", "zhongkejin", "myvocal", "byteplus",
        "minimax", "aws",
    }  # fmt: skip
    assert listing["azure"].locations == ("sg",)
    assert listing["azure"].purposes == {
        Purpose.TTS, Purpose.ASR, Purpose.TEXT_GENERATION, Purpose.TRANSLATION
    }  # fmt: skip
    assert listing["elevenlabs"].residency_environments == ("eu", "in", "sg", "us")
    assert listing["myvocal"].locations == ("th", "ie")
    assert listing["minimax"].locations == ("cn",)
    assert listing["aws"].data_types == {DataType.ALL} and listing["aws"].encrypted
    assert listing["byteplus"].data_types == {DataType.TEXT}


def test_minimal_entry_parses_with_defaults() -> None:
    (entry,) = parse_subprocessors(VALID).values()
    assert (entry.id, entry.adapter, entry.residency_environments) == ("acme", None, ())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('purposes = ["asr"]', 'purposes = ["stt"]'), r"\[subprocessor.acme\] key 'purposes'"),
        (('locations = ["sg"]', 'locations = ["SG"]'), r"\[subprocessor.acme\] key 'locations'"),
        (('locations = ["sg"]', "locations = []"), r"\[subprocessor.acme\] key 'locations'"),
        (('name = "Acme Speech"\n', ""), r"\[subprocessor.acme\]: missing key 'name'"),
        (('data_types = ["audio"]', 'data_type = ["audio"]'), r"unknown key 'data_type'"),
        (('data_types = ["audio"]', 'data_types = ["audio"]\nencrypted = "yes"'), "'encrypted'"),
    ],
)
def test_malformed_entries_are_refused_naming_entry_and_key(
    edit: tuple[str, str], message: str
) -> None:
    with pytest.raises(SubprocessorConfigError, match=message):
        parse_subprocessors(VALID.replace(*edit))


def test_malformed_toml_and_unknown_tables_are_refused() -> None:
    with pytest.raises(SubprocessorConfigError, match="not valid TOML"):
        parse_subprocessors("[subprocessor.acme")
    with pytest.raises(SubprocessorConfigError, match="unknown top-level table 'vendors'"):
        parse_subprocessors(VALID + "\n[vendors]\n")


def test_adapter_may_narrow_to_a_residency_environment_but_not_widen() -> None:
    elevenlabs = load_subprocessors(SHIPPED)["elevenlabs"]
    eu = capabilities_for(
        elevenlabs, name="elevenlabs-eu", purposes=frozenset({Purpose.TTS}),
        languages=frozenset({"en"}), locations=frozenset({"eu"}),
    )  # fmt: skip
    assert eu.processing_locations == {"eu"} and eu.subprocessor_id == "elevenlabs"
    with pytest.raises(SubprocessorConfigError, match="locations"):
        capabilities_for(
            elevenlabs, name="x", purposes=frozenset({Purpose.TTS}),
            languages=frozenset({"en"}), locations=frozenset({"cn"}),
        )  # fmt: skip
    with pytest.raises(SubprocessorConfigError, match="purposes"):
        capabilities_for(
            elevenlabs, name="x", purposes=frozenset({Purpose.ASR}), languages=frozenset({"en"})
        )
