"""Logs carry structured fields and never a raw phone number."""

from __future__ import annotations

import json
import logging

import pytest

from voicegw.logs import JsonFormatter, mask_number


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+6591234567", "+65****4567"),
        ("+14155550123", "+14****0123"),
        ("+44 20 7946 0958", "+44****0958"),
        ("6591234567", "65****4567"),
        ("12345", "*****"),
        ("", ""),
        (None, ""),
    ],
)
def test_mask_number(number: str | None, masked: str) -> None:
    assert mask_number(number) == masked


@pytest.mark.parametrize("number", ["+6591234567", "6591234567", "12345", "+1 (415) 555-0123"])
def test_masking_a_masked_number_changes_nothing(number: str) -> None:
    once = mask_number(number)
    assert mask_number(once) == once


def _format(record: logging.LogRecord) -> dict[str, object]:
    return json.loads(JsonFormatter().format(record))  # type: ignore[no-any-return]


def test_json_formatter_emits_structured_fields() -> None:
    record = logging.LogRecord("voicegw.sip", logging.INFO, __file__, 1, "call.started", None, None)
    record.call_id = "c-1"
    record.caller = mask_number("+6591234567")
    entry = _format(record)
    assert entry["event"] == "call.started"
    assert entry["call_id"] == "c-1"
    assert entry["caller"] == "+65****4567"
    assert entry["level"] == "info"


def test_json_formatter_masks_numbers_that_slipped_through() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "from %s", ("+6591234567",), None)
    record.target = "sip:+14155550123@carrier"
    entry = _format(record)
    assert "+6591234567" not in json.dumps(entry)
    assert entry["event"] == "from +65****4567"
    assert entry["target"] == "sip:+14****0123@carrier"


def test_exception_messages_are_not_logged() -> None:
    try:
        raise ValueError("card 4111111111111111")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    entry = _format(record)
    assert entry["exc_type"] == "ValueError"
    assert "4111" not in json.dumps(entry)


@pytest.mark.parametrize(
    "text",
    ["http://127.0.0.1:8080", "node 10.1.2.3", "version 1.2.3456789", "port 5060", "2026-11-23"],
)
def test_addresses_versions_and_dates_are_not_taken_for_numbers(text: str) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "event", None, None)
    record.where = text
    assert _format(record)["where"] == text
