"""Agent presence, sessions and the calls offered to them (no browser, no media)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from voicegw.calls.agents import (
    CALL_RULES,
    PRESENCE_RULES,
    AgentDirectory,
    AgentEvent,
    CallAction,
    CallOffered,
    CallState,
    CallStateChanged,
    Presence,
    PresenceChanged,
    PresenceEvent,
    SessionReplaced,
    SoftphoneError,
    TranscriptLine,
)
from voicegw.media.webrtc import LiveSource, WebRtcConfig

TENANT, AGENT = "acme", 7


@dataclass
class Inbox:
    """An outbox that keeps what the page would have been told."""

    events: list[AgentEvent] = field(default_factory=list)
    closed: bool = False

    def deliver(self, event: AgentEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        self.closed = True

    def last(self, kind: type) -> AgentEvent:
        return [e for e in self.events if isinstance(e, kind)][-1]


def directory(wrap_up: float = 30.0) -> AgentDirectory:
    return AgentDirectory(WebRtcConfig(host_addresses=("127.0.0.1",)), wrap_up_seconds=wrap_up)


def offer(agents: AgentDirectory, tenant: str = TENANT, agent: int = AGENT) -> str:
    call = agents.offer_call(
        tenant_id=tenant, agent_id=agent, caller="+6591234567", source=LiveSource(), sink=print
    )
    return call.call_id


def test_only_the_system_moves_agents_on_and_off_calls() -> None:
    assert (Presence.ON_CALL, PresenceEvent.SET_AVAILABLE) not in PRESENCE_RULES
    assert (Presence.ON_CALL, PresenceEvent.SET_AWAY) not in PRESENCE_RULES
    assert (Presence.AWAY, PresenceEvent.CALL_ANSWERED) not in PRESENCE_RULES
    assert PRESENCE_RULES[(Presence.ON_CALL, PresenceEvent.CALL_ENDED)] is Presence.WRAP_UP
    assert PRESENCE_RULES[(Presence.WRAP_UP, PresenceEvent.WRAP_UP_OVER)] is Presence.AVAILABLE


def test_an_ended_call_accepts_no_action() -> None:
    assert not [key for key in CALL_RULES if key[0] is CallState.ENDED]


async def test_sign_in_starts_available_and_presence_changes_are_told() -> None:
    agents, inbox = directory(), Inbox()
    session = agents.sign_in(TENANT, AGENT, inbox)
    assert session.presence is Presence.AVAILABLE
    agents.set_presence(session, "away")
    assert inbox.events == [PresenceChanged(Presence.AWAY)]
    with pytest.raises(SoftphoneError) as err:
        agents.set_presence(session, "on_call")
    assert err.value.code == "invalid_presence"


async def test_a_second_sign_in_takes_over_and_the_first_page_is_told_and_closed() -> None:
    agents, first, second = directory(), Inbox(), Inbox()
    session = agents.sign_in(TENANT, AGENT, first)
    assert agents.sign_in(TENANT, AGENT, second) is session
    assert first.events == [SessionReplaced()] and first.closed
    assert session.outbox is second
    agents.detach(session, first)  # the old socket's late cleanup changes nothing
    assert session.outbox is second


async def test_a_detached_session_keeps_its_call_for_the_next_sign_in() -> None:
    agents, page = directory(), Inbox()
    session = agents.sign_in(TENANT, AGENT, page)
    call_id = offer(agents)
    await agents.act(session, call_id, CallAction.ANSWER)
    agents.detach(session, page)
    resumed = agents.sign_in(TENANT, AGENT, Inbox())
    assert resumed is session and resumed.call is not None
    assert resumed.call.call_id == call_id and resumed.call.state is CallState.ACTIVE
    assert resumed.presence is Presence.ON_CALL


@pytest.mark.parametrize(
    ("presence", "connected", "tenant"),
    [("away", True, TENANT), ("available", False, TENANT), ("available", True, "other")],
)
async def test_calls_ring_only_available_connected_agents_of_the_tenant(
    presence: str, connected: bool, tenant: str
) -> None:
    agents, page = directory(), Inbox()
    session = agents.sign_in(TENANT, AGENT, page)
    agents.set_presence(session, presence)
    if not connected:
        agents.detach(session, page)
    with pytest.raises(SoftphoneError) as err:
        offer(agents, tenant=tenant)
    assert err.value.code == "agent_unavailable"


async def test_the_ring_shows_the_tenant_and_a_masked_number_only() -> None:
    agents, page = directory(), Inbox()
    agents.sign_in(TENANT, AGENT, page)
    offer(agents)
    offered = page.last(CallOffered)
    assert isinstance(offered, CallOffered)
    assert (offered.call.tenant_id, offered.call.caller) == (TENANT, "+65****4567")
    assert "91234567" not in repr(page.events)


async def test_decline_ends_the_call_and_leaves_the_agent_available() -> None:
    agents, page = directory(), Inbox()
    session = agents.sign_in(TENANT, AGENT, page)
    call_id = offer(agents)
    await agents.act(session, call_id, CallAction.DECLINE)
    ended = page.last(CallStateChanged)
    assert isinstance(ended, CallStateChanged)
    assert (ended.call.state, ended.call.ended_reason) == (CallState.ENDED, "declined")
    assert session.presence is Presence.AVAILABLE and session.call is None


async def test_answer_hold_hangup_then_wrap_up_times_out_to_available() -> None:
    agents, page = directory(wrap_up=0.05), Inbox()
    session = agents.sign_in(TENANT, AGENT, page)
    call_id = offer(agents)
    call = session.call
    assert call is not None
    await agents.act(session, call_id, CallAction.ANSWER)
    assert session.presence is Presence.ON_CALL
    await agents.act(session, call_id, CallAction.HOLD)
    assert (call.state, call.held) == (CallState.HELD, True)
    await agents.act(session, call_id, CallAction.UNHOLD)
    await agents.act(session, call_id, CallAction.HANGUP)
    assert (call.state, call.ended_reason) == (CallState.ENDED, "agent_hangup")
    assert session.presence is Presence.WRAP_UP
    await asyncio.sleep(0.15)
    assert session.presence is Presence.AVAILABLE
    assert page.events[-1] == PresenceChanged(Presence.AVAILABLE)


async def test_actions_out_of_turn_are_errors_with_stable_codes() -> None:
    agents = directory()
    session = agents.sign_in(TENANT, AGENT, Inbox())
    call_id = offer(agents)
    with pytest.raises(SoftphoneError) as err:
        await agents.act(session, call_id, CallAction.HOLD)
    assert err.value.code == "invalid_state"
    with pytest.raises(SoftphoneError) as err:
        await agents.dtmf(session, call_id, "5")
    assert err.value.code == "invalid_state"
    with pytest.raises(SoftphoneError) as err:
        await agents.act(session, "not-this-call", CallAction.ANSWER)
    assert err.value.code == "no_such_call"
    await agents.act(session, call_id, CallAction.ANSWER)
    with pytest.raises(SoftphoneError) as err:
        await agents.dtmf(session, call_id, "5x")
    assert err.value.code == "invalid_dtmf"


async def test_digits_mute_and_secure_pause_reach_the_call() -> None:
    agents, page = directory(), Inbox()
    session = agents.sign_in(TENANT, AGENT, page)
    call_id = offer(agents)
    call = session.call
    assert call is not None
    await agents.act(session, call_id, CallAction.ANSWER)
    await agents.dtmf(session, call_id, "12#")
    await agents.mute(session, call_id, True)
    await agents.secure_pause(session, call_id, True)
    assert call.dtmf == ["1", "2", "#"] and call.muted
    state = page.last(CallStateChanged)
    assert isinstance(state, CallStateChanged)
    assert state.call.muted and state.call.recording.secure_pause
    assert state.call.consent.state == "unknown"


async def test_the_caller_hanging_up_ends_the_call_and_starts_wrap_up() -> None:
    agents, page = directory(), Inbox()
    session = agents.sign_in(TENANT, AGENT, page)
    call_id = offer(agents)
    call = session.call
    assert call is not None
    await agents.act(session, call_id, CallAction.ANSWER)
    waiter = asyncio.ensure_future(call.until(lambda c: c.state is CallState.ENDED))
    await agents.end_call(call_id, "caller_hangup")
    async with asyncio.timeout(1):
        await waiter
    assert call.ended_reason == "caller_hangup" and session.presence is Presence.WRAP_UP


async def test_transcript_lines_go_to_the_agent_on_that_call_only() -> None:
    agents, page, other = directory(), Inbox(), Inbox()
    session = agents.sign_in(TENANT, AGENT, page)
    agents.sign_in(TENANT, AGENT + 1, other)
    call_id = offer(agents)
    await agents.act(session, call_id, CallAction.ANSWER)
    agents.push_transcript(call_id, speaker="caller", text="hello there", final=True)
    assert page.events[-1] == TranscriptLine(call_id, "caller", "hello there", True)
    assert not [e for e in other.events if isinstance(e, TranscriptLine)]
