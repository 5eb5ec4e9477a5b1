"""Yes/no from recognised speech; the withdraw key sequence."""

from __future__ import annotations

import pytest

from voicegw.consent import Answer, DtmfKeys, classify_speech
from voicegw.consent.answers import PHRASES, WithdrawSequenceDetector


@pytest.mark.parametrize(
    ("text", "language", "expected"),
    [
        ("Yes", "en", Answer.YES),
        ("yeah sure, go ahead", "en", Answer.YES),
        ("No problem!", "en", Answer.YES),  # longest phrase wins over "no"
        ("I don't mind", "en", Answer.YES),
        ("no", "en", Answer.NO),
        ("No thanks.", "en", Answer.NO),
        ("please don't record this", "en", Answer.NO),
        ("I do NOT agree", "en", Answer.NO),
        ("Yes. No. Hmm.", "en", None),  # both: ambiguous, not a guess
        ("what is this about", "en", None),
        ("", "en", None),
        ("noon", "en", None),  # whole words only
        ("Ja, einverstanden", "de-DE", Answer.YES),
        ("Nein danke", "de", Answer.NO),
        ("sí, claro", "es", Answer.YES),
        ("yes", "xx", None),  # no table for the language: no answer
    ],
)
def test_classify_speech(text: str, language: str, expected: Answer | None) -> None:
    assert classify_speech(text, language) is expected


def test_phrase_tables_are_lowercase_normalised() -> None:
    for table in PHRASES.values():
        for phrase in table:
            assert phrase == phrase.lower().strip()
            assert "  " not in phrase


def test_withdraw_sequence_is_found_inside_other_digits() -> None:
    detector = WithdrawSequenceDetector(DtmfKeys(withdraw_sequence="*9"))
    hits = [detector.feed(d, t) for t, d in enumerate("12*3*9", start=1)]
    assert hits == [False, False, False, False, False, True]
    assert detector.feed("9", 7.0) is False  # consumed: no double trigger


def test_withdraw_sequence_needs_digits_close_together() -> None:
    detector = WithdrawSequenceDetector(DtmfKeys(withdraw_sequence="*9", withdraw_max_gap=3.0))
    assert detector.feed("*", 0.0) is False
    assert detector.feed("9", 3.5) is False
    assert detector.feed("*", 4.0) is False
    assert detector.feed("9", 6.9) is True


def test_empty_withdraw_sequence_disables_detection() -> None:
    detector = WithdrawSequenceDetector(DtmfKeys(withdraw_sequence=""))
    assert not any(detector.feed(d, 0.0) for d in "*9*9")
