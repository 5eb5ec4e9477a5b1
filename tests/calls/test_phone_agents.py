"""Agents reached at a SIP phone: reachable while registered, rung through the phone line.

The directory's side only (no SIP): the phone line here records what it was
asked to ring, as the real one (:class:`~voicegw.calls.sip_agents.SipAgentPhones`)
would start INVITEs; the SIP side runs against real phones in
``tests/e2e/test_baresip_sip_agents.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from voicegw.calls.agents import (
    AgentCall,
    AgentDirectory,
    AgentEvent,
    CallAction,
    CallOffered,
    CallState,
    Presence,
    PresenceChanged,
    SoftphoneError,
)
from voicegw.media.webrtc import LiveSource, WebRtcConfig

TENANT = "acme"


@dataclass
class RecordingLine:
    """A phone line that keeps what it was asked to ring (and which links changed)."""

    rung: list[tuple[AgentCall, str]] = field(default_factory=list)
    linked_agents: list[int] = field(default_factory=list)

    def ring(self, call: AgentCall, sip_user: str) -> None:
        self.rung.append((call, sip_user))

    def linked(self, agent_id: int) -> None:
        self.linked_agents.append(agent_id)


@dataclass
class Inbox:
    events: list[AgentEvent] = field(default_factory=list)
    available: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, event: AgentEvent) -> None:
        self.events.append(event)
        if isinstance(event, PresenceChanged) and event.presence is Presence.AVAILABLE:
            self.available.set()

    def close(self) -> None:
        pass


def directory(line: RecordingLine | None = None) -> AgentDirectory:
    agents = AgentDirectory(WebRtcConfig(host_addresses=("127.0.0.1",)), wrap_up_seconds=0.05)
    agents.phones = line
    return agents


def offer(agents: AgentDirectory, agent: int) -> AgentCall:
    return agents.offer_call(
        tenant_id=TENANT, agent_id=agent, caller="+6591234567", source=LiveSource(), sink=print
    )


async def test_a_phone_agent_is_available_only_while_its_login_is_registered() -> None:
    line = RecordingLine()
    agents = directory(line)
    agents.link_phone(TENANT, 1, "desk1", ["sales"])
    assert line.linked_agents == [1]  # the line looks at the registration at once
    assert agents.available_agents(TENANT) == []
    with pytest.raises(SoftphoneError) as refused:
        offer(agents, 1)
    assert refused.value.code == "agent_unavailable"
    agents.phone_registered(1, True)
    assert agents.available_agents(TENANT, frozenset({"sales"})) == [1]
    assert agents.available_agents(TENANT, frozenset({"billing"})) == []
    assert agents.available_agents("globex") == []
    agents.phone_registered(1, False)
    assert agents.available_agents(TENANT) == []


async def test_away_is_away_whatever_the_registration() -> None:
    agents = directory(RecordingLine())
    agents.link_phone(TENANT, 1, "desk1")
    agents.phone_registered(1, True)
    session = agents.session(1)
    assert session is not None
    agents.set_presence(session, "away")
    assert agents.available_agents(TENANT) == []
    agents.set_presence(session, "available")
    assert agents.available_agents(TENANT) == [1]


async def test_offering_rings_the_phone_and_its_answer_is_the_agents_answer() -> None:
    line = RecordingLine()
    agents = directory(line)
    agents.link_phone(TENANT, 1, "desk1")
    agents.phone_registered(1, True)
    page = Inbox()
    agents.sign_in(TENANT, 1, page)  # a page open beside the phone shows the call
    call = offer(agents, 1)
    assert line.rung == [(call, "desk1")]
    assert (call.phone, call.state) == ("desk1", CallState.RINGING)
    assert any(isinstance(e, CallOffered) for e in page.events)
    session = agents.session(1)
    assert session is not None
    # The page may not answer or take the audio of a call on the phone.
    with pytest.raises(SoftphoneError):
        await agents.act(session, call.call_id, CallAction.ANSWER)
    with pytest.raises(SoftphoneError):
        await agents.negotiate(session, call.call_id, "v=0")

    agents.phone_answered(call)
    assert call.answered_at is not None
    assert (call.state, presence_of(agents, 1)) == (CallState.ACTIVE, Presence.ON_CALL)
    assert agents.available_agents(TENANT) == []
    with pytest.raises(SoftphoneError):
        await agents.act(session, call.call_id, CallAction.HOLD)

    await agents.end_call(call.call_id, "agent_hangup")
    assert presence_of(agents, 1) is Presence.WRAP_UP
    await asyncio.wait_for(page.available.wait(), 2.0)  # wrap-up over
    assert agents.available_agents(TENANT) == [1]


async def test_the_page_may_end_a_call_ringing_on_the_phone() -> None:
    agents = directory(RecordingLine())
    agents.link_phone(TENANT, 1, "desk1")
    agents.phone_registered(1, True)
    session = agents.sign_in(TENANT, 1, Inbox())
    call = offer(agents, 1)
    await agents.act(session, call.call_id, CallAction.DECLINE)
    assert (call.state, call.ended_reason) == (CallState.ENDED, "declined")
    assert session.presence is Presence.AVAILABLE  # never connected: no wrap-up


async def test_without_a_phone_line_phone_agents_are_never_offered_calls() -> None:
    agents = directory(None)
    agents.link_phone(TENANT, 1, "desk1")
    agents.phone_registered(1, True)
    with pytest.raises(SoftphoneError):
        offer(agents, 1)


async def test_unlinking_returns_the_agent_to_the_softphone() -> None:
    agents = directory(RecordingLine())
    agents.link_phone(TENANT, 1, "desk1")
    agents.phone_registered(1, True)
    agents.link_phone(TENANT, 1, None)
    assert agents.available_agents(TENANT) == []  # no page open either
    agents.sign_in(TENANT, 1, Inbox())
    call = offer(agents, 1)
    assert call.phone is None
    # Another tenant cannot link a session that is not theirs.
    agents.link_phone("globex", 1, "desk9")
    session = agents.session(1)
    assert session is not None and session.phone is None


def presence_of(agents: AgentDirectory, agent: int) -> Presence | None:
    session = agents.session(agent)
    return None if session is None else session.presence
