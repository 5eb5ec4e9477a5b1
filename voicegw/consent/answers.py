"""Turning a caller's keypress or recognised words into yes / no.

A small phrase table per language, matched on whole words, longest phrase
first ("no problem" is a yes, "no" a no). An utterance with both a yes and a
no phrase is ambiguous and counts as no answer at all: asking again (or timing
out, which declines) is safer than guessing.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass


class Answer(enum.StrEnum):
    YES = "yes"
    NO = "no"


# language -> (yes phrases, no phrases), "|"-separated, lowercase.
_PHRASE_LISTS: dict[str, tuple[str, str]] = {
    "en": (
        "yes|yeah|yep|yup|sure|ok|okay|fine|i agree|agree|i consent|go ahead|no problem"
        "|that's fine|don't mind|do not mind|of course",
        "no|nope|nah|no thanks|no thank you|i don't agree|i do not agree|don't record"
        "|do not record|decline|i decline|i object|opt out|rather not|not okay|not ok",
    ),
    "de": (
        "ja|jawohl|einverstanden|in ordnung|okay|ok|gerne",
        "nein|nicht einverstanden|lieber nicht|nein danke|widerspreche",
    ),
    "es": (
        "sí|si|claro|de acuerdo|vale|acepto",
        "no|no acepto|no gracias|no estoy de acuerdo",
    ),
}

PHRASES: dict[str, dict[str, Answer]] = {
    language: {phrase: Answer.YES for phrase in yes.split("|")}
    | {phrase: Answer.NO for phrase in no.split("|")}
    for language, (yes, no) in _PHRASE_LISTS.items()
}
"""language -> phrase -> answer."""

_WORD = re.compile(r"[\w']+")
_MAX_PHRASE_WORDS = max(len(p.split()) for table in PHRASES.values() for p in table)


def classify_speech(
    text: str, language: str = "en", table: Mapping[str, Answer] | None = None
) -> Answer | None:
    """YES, NO, or None when the words say neither or both.

    ``table`` (phrase -> answer, e.g. a tenant's own list) replaces the built-in one.
    """
    if table is None:
        table = PHRASES.get(language.split("-")[0].lower())
        longest = _MAX_PHRASE_WORDS
    else:
        longest = max((len(p.split()) for p in table), default=0)
    if table is None:
        return None
    words = _WORD.findall(text.lower().replace("’", "'"))
    found: set[Answer] = set()
    position = 0
    while position < len(words):
        for size in range(min(longest, len(words) - position), 0, -1):
            answer = table.get(" ".join(words[position : position + size]))
            if answer is not None:
                found.add(answer)
                position += size
                break
        else:
            position += 1
    return found.pop() if len(found) == 1 else None


@dataclass(frozen=True)
class DtmfKeys:
    """Which keys mean what. ``opt_out`` is the objection key in opt-out mode."""

    yes: str = "1"
    no: str = "2"
    opt_out: str = "2"
    withdraw_sequence: str = "*9"
    withdraw_max_gap: float = 3.0  # seconds allowed between the digits of the sequence


class WithdrawSequenceDetector:
    """Spots the withdraw key sequence (e.g. ``*9``) in a stream of DTMF digits."""

    def __init__(self, keys: DtmfKeys) -> None:
        self._sequence = keys.withdraw_sequence
        self._max_gap = keys.withdraw_max_gap
        self._recent: list[tuple[float, str]] = []

    def feed(self, digit: str, now: float) -> bool:
        """True when ``digit`` completes the sequence in time."""
        if not self._sequence:
            return False
        if self._recent and now - self._recent[-1][0] > self._max_gap:
            self._recent.clear()
        self._recent.append((now, digit))
        del self._recent[: -len(self._sequence)]
        if "".join(d for _, d in self._recent) == self._sequence:
            self._recent.clear()
            return True
        return False
