"""A tenant's spoken answers and confidence floor: validated settings the capture obeys."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from voicegw.calls.consent_flow import capture_config, spoken_answers
from voicegw.consent import (
    Answer,
    CallContext,
    ConsentInput,
    ConsentMachine,
    ConsentPolicy,
    Decision,
    DecisionMade,
    PartyRole,
    PromptFinished,
    PromptRef,
    PromptStarted,
    RecordingMode,
    Speech,
    State,
    resolve_mode,
)
from voicegw.tenant_settings import TenantSettings, merge_settings

OWN_ANSWERS = {"en": {"yes": ["Yes I agree", "absolutely"], "no": ["no I do not agree"]}}


def settings_with(**capture: object) -> TenantSettings:
    return merge_settings(
        TenantSettings(recording_mode="opt_in"),
        {"consent_capture": {"methods": ["dtmf", "speech"], **capture}},
    )


def run_caller(settings: TenantSettings, inputs: Sequence[ConsentInput]) -> ConsentMachine:
    policy = ConsentPolicy(default_mode=RecordingMode.OPT_IN)
    machine = ConsentMachine(
        "caller",
        PartyRole.CALLER,
        resolve_mode(policy, CallContext(None, None, None)),
        now=0.0,
        prompt=PromptRef.for_content("May we record?", "v1"),
        config=capture_config(settings),
    )
    for event in inputs:
        machine.handle(event)
    return machine


ASKED = (PromptStarted(1.0), PromptFinished(3.0))


# --- validation ------------------------------------------------------------------------------


def test_spoken_answers_are_normalised_to_the_words_recognisers_return() -> None:
    s = settings_with(
        spoken_answers={"en": {"yes": ["  Yes   I’m fine", "yes i'm fine"], "no": ["No"]}}
    )
    answers = s.consent_capture.spoken_answers["en"]
    assert (answers.yes, answers.no) == (("yes i'm fine",), ("no",))


def test_defaults_keep_the_built_in_table_and_floor() -> None:
    capture = TenantSettings().consent_capture
    assert (capture.spoken_answers, capture.min_speech_confidence) == ({}, 0.6)
    assert spoken_answers(TenantSettings())["yeah"] is Answer.YES


@pytest.mark.parametrize(
    ("capture", "field", "message"),
    [
        ({"spoken_answers": {"en": {"yes": ["yes"], "no": ["yes"]}}},
         "consent_capture.spoken_answers.en", "both yes and no: yes"),
        ({"spoken_answers": {"EN": {"yes": ["yes"], "no": ["no"]}}},
         "consent_capture.spoken_answers", "'EN' is not a language code"),
        ({"spoken_answers": {"en": {"yes": ["yes!"], "no": ["no"]}}},
         "consent_capture.spoken_answers.en.yes", "'yes!' is not an answer phrase"),
        ({"spoken_answers": {"en": {"yes": ["press 1"], "no": ["no"]}}},
         "consent_capture.spoken_answers.en.yes", "words of letters"),
        ({"spoken_answers": {"en": {"yes": [], "no": ["no"]}}},
         "consent_capture.spoken_answers.en.yes", "at least 1"),
        ({"spoken_answers": {"en": {"yes": ["yes"]}}},
         "consent_capture.spoken_answers.en.no", "required"),
        ({"min_speech_confidence": 1.5}, "consent_capture.min_speech_confidence", "less than"),
        ({"min_speech_confidence": -0.1}, "consent_capture.min_speech_confidence", "greater"),
    ],
)  # fmt: skip
def test_invalid_answer_settings_name_the_field_and_the_fix(
    capture: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as err:
        settings_with(**capture)
    first = err.value.errors()[0]
    assert ".".join(str(p) for p in first["loc"]) == field
    assert message in first["msg"] or message in first["type"]


def test_speech_capture_in_a_language_without_answers_is_refused_with_the_setting_to_add() -> None:
    with pytest.raises(ValidationError, match=r"consent_capture\.spoken_answers\.fr"):
        merge_settings(
            TenantSettings(),
            {"consent_prompt": {"language": "fr-FR"}, "consent_capture": {"methods": ["speech"]}},
        )
    fr = {"fr": {"yes": ["oui", "d'accord"], "no": ["non"]}}
    s = merge_settings(
        TenantSettings(),
        {
            "consent_prompt": {"language": "fr-FR"},
            "consent_capture": {"methods": ["speech"], "spoken_answers": fr},
        },
    )
    assert spoken_answers(s) == {"oui": Answer.YES, "d'accord": Answer.YES, "non": Answer.NO}


# --- the capture honours them ------------------------------------------------------------------


def test_the_tenants_phrases_replace_the_built_in_table_for_its_language() -> None:
    s = settings_with(spoken_answers=OWN_ANSWERS)
    assert spoken_answers(s) == {
        "yes i agree": Answer.YES,
        "absolutely": Answer.YES,
        "no i do not agree": Answer.NO,
    }
    granted = run_caller(s, (*ASKED, Speech(4.0, "absolutely", 0.9)))
    assert granted.state is State.GRANTED
    # "yeah" is in the built-in table but not the tenant's: no answer, the question stays open.
    unheard = run_caller(s, (*ASKED, Speech(4.0, "yeah", 0.9)))
    assert unheard.state is State.AWAITING_ANSWER
    declined = run_caller(s, (*ASKED, Speech(4.0, "no i do not agree", 0.9)))
    assert declined.state is State.DECLINED


def test_speech_below_the_tenants_floor_is_no_answer_and_the_timeout_declines() -> None:
    s = settings_with(spoken_answers=OWN_ANSWERS, min_speech_confidence=0.8, timeout_seconds=5)
    machine = run_caller(s, (*ASKED, Speech(4.0, "yes i agree", 0.79)))
    assert machine.state is State.AWAITING_ANSWER
    deadline = machine.next_deadline()
    assert deadline == pytest.approx(3.0 + 5)
    events = machine.handle_timeout(deadline)
    (decided,) = [e.record for e in events if isinstance(e, DecisionMade)]
    assert decided.decision is Decision.DECLINED and decided.evidence.words is None
    assert machine.state is State.DECLINED


def test_a_lower_floor_accepts_what_the_default_would_ignore() -> None:
    answer = (*ASKED, Speech(4.0, "yes i agree", 0.5))
    assert run_caller(settings_with(spoken_answers=OWN_ANSWERS), answer).state is (
        State.AWAITING_ANSWER
    )
    lenient = settings_with(spoken_answers=OWN_ANSWERS, min_speech_confidence=0.4)
    assert run_caller(lenient, answer).state is State.GRANTED
