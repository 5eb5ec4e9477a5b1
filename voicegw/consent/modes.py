"""Tenant recording modes."""

from __future__ import annotations

import enum


class RecordingMode(enum.StrEnum):
    """How a tenant (or a number, or a campaign) wants calls recorded.

    * ``off``      nothing is recorded; no prompt.
    * ``notify``   a notice is played; recording starts when it has finished.
    * ``opt_in``   recording only after the caller says or keys "yes".
    * ``opt_out``  recording unless the caller objects during the prompt or
                   the answer window after it.
    """

    OFF = "off"
    NOTIFY = "notify"
    OPT_IN = "opt_in"
    OPT_OUT = "opt_out"


STRICTNESS: dict[RecordingMode, int] = {
    RecordingMode.NOTIFY: 0,
    RecordingMode.OPT_OUT: 1,
    RecordingMode.OPT_IN: 2,
    RecordingMode.OFF: 3,
}
"""How much each mode protects the caller; a legal rule may only move up this scale."""
