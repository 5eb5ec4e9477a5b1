"""Structured logging, and the masking that keeps personal data out of it.

Messages are static event names; identifiers travel in structured fields
(``logger.info("call.started", extra={"call_id": ..., "caller": mask_number(n)})``).
Phone numbers are masked at the source with :func:`mask_number`; the JSON
formatter masks anything that still looks like an E.164 number as a last line
of defence.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

# A run of digits with the separators people write in phone numbers; dots are left
# out so IP addresses and versions are not taken for numbers.
_PHONE_LIKE = re.compile(r"(?<![\w.])\+?\d[\d\s()-]{5,}\d(?![\w.])")
_MIN_DIGITS, _MAX_DIGITS = 7, 15
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


_ALREADY_MASKED = re.compile(r"\+?\d{0,2}\*+\d{0,4}")


def mask_number(number: str | None) -> str:
    """Mask a phone number for logs: ``+6591234567`` -> ``+65****4567``.

    Keeps a leading ``+`` with the first two digits (enough to see the country
    for most numbering plans) and the last four; short inputs are fully masked.
    """
    if not number:
        return ""
    if _ALREADY_MASKED.fullmatch(number):
        # Masking is applied at several layers (call layer, then the log
        # formatter's last-resort pass): a masked number must stay as it is.
        return number
    digits = re.sub(r"\D", "", number)
    plus = "+" if number.strip().startswith("+") else ""
    if len(digits) <= 6:
        return plus + "*" * len(digits)
    return f"{plus}{digits[:2]}****{digits[-4:]}"


def _mask_match(match: re.Match[str]) -> str:
    found = match.group(0)
    digits = sum(c.isdigit() for c in found)
    if _ISO_DATE.fullmatch(found):
        return found
    return mask_number(found) if _MIN_DIGITS <= digits <= _MAX_DIGITS else found


def _mask_text(text: str) -> str:
    return _PHONE_LIKE.sub(_mask_match, text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the record's structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _mask_text(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key.startswith("_"):
                continue
            entry[key] = _mask_text(value) if isinstance(value, str) else value
        if record.exc_info and record.exc_info[0] is not None:
            # Type only: exception messages may carry payloads (numbers, SDP, digits).
            entry["exc_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{k}={_mask_text(v) if isinstance(v, str) else v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD_ATTRS and not k.startswith("_")
        )
        message = _mask_text(record.getMessage())
        return f"{record.levelname:<7} {record.name}: {message} {fields}".rstrip()


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosqlite/asyncio debug chatter carries SQL parameters; keep it out.
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
