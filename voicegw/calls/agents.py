"""Agents at softphones: presence, one signed-in session each, and the calls they take.

Presence and call state change only through the two rule tables below
(:data:`PRESENCE_RULES`, :data:`CALL_RULES`); what an agent may ask for and
what the system does share them.

A session belongs to the agent, not to a WebSocket: a page reload or a lost
network only detaches the socket (:meth:`AgentDirectory.detach`), and the next
sign-in with the agent's token picks up the same presence and call. The call's
audio runs over a :class:`~voicegw.media.webrtc.WebRtcLeg` that is not tied to
the socket either; a reloaded page negotiates a new leg and the call's audio
source and sink carry on. A second sign-in takes over: the old socket is told
(:class:`SessionReplaced`) and closed.

The caller side is a Python API (:meth:`AgentDirectory.offer_call`): it brings
a :class:`~voicegw.media.webrtc.FrameSource` (what the agent hears) and a sink
for the agent's 20 ms 8 kHz PCM frames. The SIP bridge will use it; tests use
it to play generated audio and capture what the browser sends back.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Protocol

from voicegw.logs import mask_number
from voicegw.media.webrtc import FrameSource, WebRtcConfig, WebRtcLeg, WebRtcLegError

__all__ = [
    "CALL_RULES",
    "PRESENCE_RULES",
    "AgentCall",
    "AgentDirectory",
    "AgentEvent",
    "AgentSession",
    "CallAction",
    "CallOffered",
    "CallState",
    "CallStateChanged",
    "CallView",
    "Outbox",
    "Presence",
    "PresenceChanged",
    "PresenceEvent",
    "SessionReplaced",
    "SoftphoneError",
    "TranscriptLine",
]

log = logging.getLogger(__name__)

DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")


class Presence(StrEnum):
    AVAILABLE = "available"
    AWAY = "away"
    ON_CALL = "on_call"
    WRAP_UP = "wrap_up"


class PresenceEvent(StrEnum):
    SET_AVAILABLE = "set_available"
    SET_AWAY = "set_away"
    CALL_ANSWERED = "call_answered"
    CALL_ENDED = "call_ended"
    WRAP_UP_OVER = "wrap_up_over"


P, PE = Presence, PresenceEvent
#: (presence, event) -> next presence; a missing pair is not allowed.
PRESENCE_RULES: Final[Mapping[tuple[Presence, PresenceEvent], Presence]] = MappingProxyType(
    {
        (P.AVAILABLE, PE.SET_AVAILABLE): P.AVAILABLE,
        (P.AVAILABLE, PE.SET_AWAY): P.AWAY,
        (P.AVAILABLE, PE.CALL_ANSWERED): P.ON_CALL,
        (P.AWAY, PE.SET_AVAILABLE): P.AVAILABLE,
        (P.AWAY, PE.SET_AWAY): P.AWAY,
        (P.ON_CALL, PE.CALL_ENDED): P.WRAP_UP,
        # An agent ends wrap-up early by choosing a presence.
        (P.WRAP_UP, PE.SET_AVAILABLE): P.AVAILABLE,
        (P.WRAP_UP, PE.SET_AWAY): P.AWAY,
        (P.WRAP_UP, PE.WRAP_UP_OVER): P.AVAILABLE,
    }
)

#: What an agent may choose on the presence selector.
PRESENCE_CHOICES: Final = MappingProxyType(
    {P.AVAILABLE.value: PE.SET_AVAILABLE, P.AWAY.value: PE.SET_AWAY}
)


class CallState(StrEnum):
    RINGING = "ringing"
    ACTIVE = "active"
    HELD = "held"
    ENDED = "ended"


class CallAction(StrEnum):
    ANSWER = "answer"
    DECLINE = "decline"
    HOLD = "hold"
    UNHOLD = "unhold"
    HANGUP = "hangup"


C, CA = CallState, CallAction
#: (state, action) -> next state; a missing pair is an ``invalid_state`` error.
CALL_RULES: Final[Mapping[tuple[CallState, CallAction], CallState]] = MappingProxyType(
    {
        (C.RINGING, CA.ANSWER): C.ACTIVE,
        (C.RINGING, CA.DECLINE): C.ENDED,
        (C.RINGING, CA.HANGUP): C.ENDED,
        (C.ACTIVE, CA.HOLD): C.HELD,
        (C.ACTIVE, CA.HANGUP): C.ENDED,
        (C.HELD, CA.UNHOLD): C.ACTIVE,
        (C.HELD, CA.HOLD): C.HELD,
        (C.ACTIVE, CA.UNHOLD): C.ACTIVE,
        (C.HELD, CA.HANGUP): C.ENDED,
    }
)

#: States in which the call has (or may negotiate) media with the agent.
MEDIA_STATES: Final = frozenset({C.ACTIVE, C.HELD})


class SoftphoneError(Exception):
    """A request the softphone may not make now; ``code`` is stable for the page."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- what the page is told ---------------------------------------------------------------


@dataclass(frozen=True)
class ConsentView:
    """Placeholder until the consent layer reports per call."""

    state: str = "unknown"
    mode: str | None = None


@dataclass(frozen=True)
class RecordingView:
    """Placeholder until the recording layer reports; secure pause is acknowledged only."""

    state: str = "off"
    secure_pause: bool = False


@dataclass(frozen=True)
class CallView:
    call_id: str
    tenant_id: str
    caller: str  # masked: the page never gets the raw number
    state: CallState
    muted: bool
    held: bool
    media: str
    ended_reason: str | None
    consent: ConsentView
    recording: RecordingView


@dataclass(frozen=True)
class PresenceChanged:
    presence: Presence


@dataclass(frozen=True)
class CallOffered:
    call: CallView


@dataclass(frozen=True)
class CallStateChanged:
    call: CallView


@dataclass(frozen=True)
class TranscriptLine:
    call_id: str
    speaker: str
    text: str
    final: bool


@dataclass(frozen=True)
class SessionReplaced:
    reason: str = "signed in elsewhere"


AgentEvent = PresenceChanged | CallOffered | CallStateChanged | TranscriptLine | SessionReplaced


class Outbox(Protocol):
    """The socket side of a session: must not block (queue and return)."""

    def deliver(self, event: AgentEvent) -> None: ...

    def close(self) -> None: ...


# --- state -------------------------------------------------------------------------------


@dataclass(eq=False)
class AgentCall:
    """One call offered to an agent, with its caller-side audio endpoints."""

    call_id: str
    tenant_id: str
    agent_id: int
    caller: str
    source: FrameSource
    sink: Callable[[bytes], None]
    state: CallState = CallState.RINGING
    muted: bool = False
    held: bool = False
    ended_reason: str | None = None
    secure_pause: bool = False
    consent: ConsentView = field(default_factory=ConsentView)
    dtmf: list[str] = field(default_factory=list)
    leg: WebRtcLeg | None = None
    #: Wall-clock times (``time.time()``) for the supervisor view's durations.
    offered_at: float = field(default_factory=time.time)
    answered_at: float | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> CallView:
        return CallView(
            call_id=self.call_id,
            tenant_id=self.tenant_id,
            caller=mask_number(self.caller),
            state=self.state,
            muted=self.muted,
            held=self.held,
            media=self.leg.connection_state if self.leg is not None else "none",
            ended_reason=self.ended_reason,
            consent=self.consent,
            recording=RecordingView(secure_pause=self.secure_pause),
        )

    async def until(self, predicate: Callable[[AgentCall], bool]) -> None:
        """Wait until ``predicate(call)`` holds; callers bound it with ``asyncio.timeout``."""
        while not predicate(self):
            await self._changed.wait()

    def _notify(self) -> None:
        # Wake every waiter, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()


@dataclass(eq=False)
class AgentSession:
    tenant_id: str
    agent_id: int
    presence: Presence = Presence.AVAILABLE
    outbox: Outbox | None = None
    call: AgentCall | None = None
    wrap_up: asyncio.TimerHandle | None = None
    #: When ``presence`` last changed (``time.time()``), for the supervisor view.
    presence_since: float = field(default_factory=time.time)

    def tell(self, event: AgentEvent) -> None:
        if self.outbox is not None:
            self.outbox.deliver(event)


class AgentDirectory:
    """Every agent's softphone session in this process, and the calls offered to them."""

    def __init__(self, webrtc: WebRtcConfig, *, wrap_up_seconds: float = 30.0) -> None:
        if not 0 <= wrap_up_seconds <= 3600:
            raise ValueError("wrap_up_seconds must be within 0..3600")
        self.webrtc = webrtc
        self.wrap_up_seconds = wrap_up_seconds
        self._sessions: dict[int, AgentSession] = {}
        self._calls: dict[str, AgentCall] = {}

    # --- sessions ----------------------------------------------------------------------

    def session(self, agent_id: int) -> AgentSession | None:
        return self._sessions.get(agent_id)

    def sessions(self, tenant_id: str) -> list[AgentSession]:
        """The sessions of ``tenant_id``'s agents (read-only use: the supervisor view)."""
        return [s for s in self._sessions.values() if s.tenant_id == tenant_id]

    def calls(self, tenant_id: str) -> list[AgentCall]:
        """The calls of ``tenant_id`` offered to agents and not ended yet (read-only use)."""
        return [c for c in self._calls.values() if c.tenant_id == tenant_id]

    def available_agents(self, tenant_id: str) -> list[int]:
        """Agents of ``tenant_id`` that :meth:`offer_call` would ring right now."""
        return [
            s.agent_id
            for s in self._sessions.values()
            if s.tenant_id == tenant_id
            and s.outbox is not None
            and s.presence is Presence.AVAILABLE
            and s.call is None
        ]

    def sign_in(self, tenant_id: str, agent_id: int, outbox: Outbox) -> AgentSession:
        """Attach ``outbox`` to the agent's session, creating it or taking it over."""
        session = self._sessions.get(agent_id)
        if session is None:
            session = AgentSession(tenant_id=tenant_id, agent_id=agent_id)
            self._sessions[agent_id] = session
        previous, session.outbox = session.outbox, outbox
        if previous is not None and previous is not outbox:
            log.info("agent %s signed in again: closing the older softphone", agent_id)
            previous.deliver(SessionReplaced())
            previous.close()
        return session

    def detach(self, session: AgentSession, outbox: Outbox) -> None:
        """The socket went away; the session and its call stay for a reconnect."""
        if session.outbox is outbox:
            session.outbox = None

    def set_presence(self, session: AgentSession, choice: str) -> None:
        event = PRESENCE_CHOICES.get(choice)
        if event is None:
            raise SoftphoneError(
                "invalid_presence", f"presence must be one of {list(PRESENCE_CHOICES)}"
            )
        self._move(session, event)

    def _move(self, session: AgentSession, event: PresenceEvent) -> None:
        target = PRESENCE_RULES.get((session.presence, event))
        if target is None:
            raise SoftphoneError(
                "invalid_presence", f"cannot {event.value} while {session.presence.value}"
            )
        if session.wrap_up is not None:
            session.wrap_up.cancel()
            session.wrap_up = None
        if target is Presence.WRAP_UP:
            session.wrap_up = asyncio.get_running_loop().call_later(
                self.wrap_up_seconds, self._wrap_up_over, session
            )
        if target is not session.presence:
            session.presence = target
            session.presence_since = time.time()
            session.tell(PresenceChanged(target))

    def _wrap_up_over(self, session: AgentSession) -> None:
        session.wrap_up = None
        if session.presence is Presence.WRAP_UP:
            self._move(session, PresenceEvent.WRAP_UP_OVER)

    # --- calls: the caller side ---------------------------------------------------------

    def offer_call(
        self,
        *,
        tenant_id: str,
        agent_id: int,
        caller: str,
        source: FrameSource,
        sink: Callable[[bytes], None],
    ) -> AgentCall:
        """Ring an available, connected agent of ``tenant_id``; raises ``agent_unavailable``."""
        session = self._sessions.get(agent_id)
        if (
            session is None
            or session.tenant_id != tenant_id
            or session.outbox is None
            or session.presence is not Presence.AVAILABLE
            or session.call is not None
        ):
            raise SoftphoneError("agent_unavailable", f"agent {agent_id} cannot take a call now")
        call = AgentCall(
            call_id=secrets.token_hex(8),
            tenant_id=tenant_id,
            agent_id=agent_id,
            caller=caller,
            source=source,
            sink=sink,
        )
        self._calls[call.call_id] = call
        session.call = call
        log.info(
            "offering call %s from %s to agent %s", call.call_id, mask_number(caller), agent_id
        )
        session.tell(CallOffered(call.view()))
        return call

    async def end_call(self, call_id: str, reason: str) -> None:
        """The caller hung up (or the bridge failed): end the call wherever it is."""
        call = self._calls.get(call_id)
        if call is not None and call.state is not CallState.ENDED:
            await self._finish(call, reason)

    def push_transcript(self, call_id: str, *, speaker: str, text: str, final: bool) -> None:
        """Show a transcript line on the agent's page (never logged)."""
        call = self._calls.get(call_id)
        session = self._sessions.get(call.agent_id) if call is not None else None
        if call is not None and session is not None and session.call is call:
            session.tell(TranscriptLine(call_id, speaker, text, final))

    # --- calls: the agent side ----------------------------------------------------------

    def _call_of(self, session: AgentSession, call_id: str) -> AgentCall:
        call = session.call
        if call is None or call.call_id != call_id:
            raise SoftphoneError("no_such_call", "that call is not yours or has ended")
        return call

    def _next_state(self, call: AgentCall, action: CallAction) -> CallState:
        target = CALL_RULES.get((call.state, action))
        if target is None:
            raise SoftphoneError(
                "invalid_state", f"cannot {action.value} a {call.state.value} call"
            )
        return target

    async def act(self, session: AgentSession, call_id: str, action: CallAction) -> None:
        """Answer, decline, hold, unhold or hang up one of the agent's calls."""
        call = self._call_of(session, call_id)
        target = self._next_state(call, action)
        if target is CallState.ENDED:
            reason = "declined" if action is CallAction.DECLINE else "agent_hangup"
            await self._finish(call, reason)
            return
        if action is CallAction.ANSWER:
            self._move(session, PresenceEvent.CALL_ANSWERED)
            call.answered_at = time.time()
        call.held = target is CallState.HELD
        if call.leg is not None:
            call.leg.hold(call.held)
        call.state = target
        self._changed(call)

    async def mute(self, session: AgentSession, call_id: str, on: bool) -> None:
        call = self._call_of(session, call_id)
        if call.state not in MEDIA_STATES:
            raise SoftphoneError("invalid_state", f"cannot mute a {call.state.value} call")
        call.muted = on
        if call.leg is not None:
            call.leg.mute(on)
        self._changed(call)

    async def dtmf(self, session: AgentSession, call_id: str, digits: str) -> None:
        call = self._call_of(session, call_id)
        if call.state is not CallState.ACTIVE:
            raise SoftphoneError("invalid_state", "digits can be sent on an active call only")
        if not digits or len(digits) > 32 or set(digits) - DTMF_DIGITS:
            raise SoftphoneError("invalid_dtmf", "digits are 1-32 of 0-9 * # A-D")
        call.dtmf.extend(digits)
        call._notify()

    async def secure_pause(self, session: AgentSession, call_id: str, on: bool) -> None:
        """Acknowledge the agent's request; enforcing it is the recording layer's job."""
        call = self._call_of(session, call_id)
        if call.state not in MEDIA_STATES:
            raise SoftphoneError("invalid_state", "secure pause applies to a connected call")
        call.secure_pause = on
        self._changed(call)

    async def negotiate(self, session: AgentSession, call_id: str, sdp: str) -> str:
        """The page's WebRTC offer for a connected call; replaces any earlier leg."""
        call = self._call_of(session, call_id)
        if call.state not in MEDIA_STATES:
            raise SoftphoneError("invalid_state", "answer the call before sending media")
        old, call.leg = call.leg, None
        if old is not None:
            await old.close()
        leg = WebRtcLeg(
            self.webrtc, call.source, call.sink, on_state=lambda _s: self._changed(call)
        )
        leg.hold(call.held)
        leg.mute(call.muted)
        try:
            answer = await leg.accept_offer(sdp)
        except WebRtcLegError as exc:
            await leg.close()
            raise SoftphoneError("bad_offer", str(exc)) from exc
        if call.state not in MEDIA_STATES:
            # The caller hung up while we negotiated.
            await leg.close()
            raise SoftphoneError("invalid_state", "the call ended")
        call.leg = leg
        return answer

    async def add_candidate(
        self, session: AgentSession, call_id: str, candidate: str, sdp_mid: str | None
    ) -> None:
        call = self._call_of(session, call_id)
        if call.leg is None:
            raise SoftphoneError("invalid_state", "send webrtc.offer first")
        try:
            await call.leg.add_remote_candidate(candidate, sdp_mid)
        except (ValueError, WebRtcLegError) as exc:
            raise SoftphoneError("bad_candidate", "candidate is not valid") from exc

    # --- shared ------------------------------------------------------------------------

    def _changed(self, call: AgentCall) -> None:
        session = self._sessions.get(call.agent_id)
        if session is not None and session.call is call:
            session.tell(CallStateChanged(call.view()))
        call._notify()

    async def _finish(self, call: AgentCall, reason: str) -> None:
        was_connected = call.state in MEDIA_STATES
        call.state = CallState.ENDED
        call.ended_reason = reason
        self._calls.pop(call.call_id, None)
        leg, call.leg = call.leg, None
        if leg is not None:
            await leg.close()
        session = self._sessions.get(call.agent_id)
        if session is not None and session.call is call:
            session.tell(CallStateChanged(call.view()))
            session.call = None
            if was_connected:
                self._move(session, PresenceEvent.CALL_ENDED)
        log.info("call %s ended: %s", call.call_id, reason)
        call._notify()

    async def close(self) -> None:
        """End every call (server shutdown)."""
        for call in list(self._calls.values()):
            await self._finish(call, "shutdown")
