"""Key presses carried by SIP INFO (application/dtmf-relay, application/dtmf).

Read into the same :class:`~voicegw.media.dtmf.DtmfDigit` an RFC 4733 receiver
reports, so a call's digit handling does not care how the digit came.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from voicegw.media.dtmf import EVENT_DIGITS, DtmfDigit

_SIGNAL_RE = re.compile(r"^\s*signal\s*=\s*(\S+)\s*$", re.IGNORECASE | re.MULTILINE)
_DURATION_RE = re.compile(r"^\s*duration\s*=\s*(\d{1,6})\s*$", re.IGNORECASE | re.MULTILINE)


def _dtmf_relay(body: str) -> tuple[str, int] | None:
    signal, duration = _SIGNAL_RE.search(body), _DURATION_RE.search(body)
    if signal is None:
        return None
    return signal.group(1), int(duration.group(1)) if duration else 0


def _dtmf_plain(body: str) -> tuple[str, int] | None:
    return body.strip(), 0


#: Content types of INFO that carry one key press, and how to read (digit, duration ms).
INFO_DTMF: dict[str, Callable[[str], tuple[str, int] | None]] = {
    "application/dtmf-relay": _dtmf_relay,
    "application/dtmf": _dtmf_plain,
}


def info_digit(content_type: str | None, body: bytes) -> DtmfDigit | None:
    """The key press an INFO carries, as the RFC 4733 receiver would report it; None if none."""
    reader = INFO_DTMF.get((content_type or "").split(";")[0].strip().lower())
    if reader is None:
        return None
    found = reader(body.decode("utf-8", "replace"))
    if found is None:
        return None
    signal, duration_ms = found
    digit = signal.upper()
    event = EVENT_DIGITS.find(digit) if len(digit) == 1 else -1
    if event < 0:
        return None
    # 8 kHz units, as telephone-event durations are; no RTP timestamp exists for it.
    return DtmfDigit(digit, event, 0, min(duration_ms * 8, 0xFFFF), 0, True)


__all__ = ["INFO_DTMF", "info_digit"]
