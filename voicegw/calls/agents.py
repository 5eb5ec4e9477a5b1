"""Agents at softphones or SIP phones: presence, one session each, and the calls they take.

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
a :class:`~voicegw.media.webrtc.LiveSource` (what the agent hears) and a sink
for the agent's 20 ms 8 kHz PCM frames. The SIP bridge will use it; tests use
it to play generated audio and capture what the browser sends back.

An agent may instead be reached at a SIP phone (:meth:`AgentDirectory.link_phone`:
one of the tenant's SIP logins). Such an agent is reachable while the login has
a live registration (:meth:`AgentDirectory.phone_registered`), whether or not a
softphone page is open; presence, skills, wrap-up and the queue's longest-idle
order are the same as a softphone agent's. Offering the call rings the phone
through the :class:`PhoneLine` (:mod:`voicegw.calls.sip_agents`), which reports
the answer (:meth:`AgentDirectory.phone_answered`) or ends the call; the page,
if one is signed in, shows the call but cannot answer, hold or send media for it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Protocol, TypeVar

from voicegw.calls.agent_transfers import TargetKind, TransferError, TransferMode, TransferTarget
from voicegw.logs import mask_number
from voicegw.media.webrtc import LiveSource, WebRtcConfig, WebRtcLeg, WebRtcLegError

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
    "PhoneLine",
    "Presence",
    "PresenceChanged",
    "PresenceEvent",
    "SessionReplaced",
    "SoftphoneError",
    "TranscriptLine",
    "TransferControl",
    "TransferView",
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
#: What a signed-in page may do to a call ringing or connected on the agent's SIP phone:
#: end it (the phone is then sent CANCEL or BYE). Answer and hold belong to the phone.
_PHONE_PAGE_ACTIONS: Final = frozenset({CA.DECLINE, CA.HANGUP})


TransferModes: Final = {m.value: m for m in TransferMode}
TargetKinds: Final = {k.value: k for k in TargetKind}


_T = TypeVar("_T")


def _enum(table: Mapping[str, _T], value: str, name: str) -> _T:
    found = table.get(value)
    if found is None:
        raise ValueError(f"{name} must be one of {sorted(table)}")
    return found


class SoftphoneError(Exception):
    """A request the softphone may not make now; ``code`` is stable for the page."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- what the page is told ---------------------------------------------------------------


@dataclass(frozen=True)
class ConsentView:
    """The caller's consent state (``voicegw.consent.State`` values) and the tenant's mode."""

    state: str = "unknown"
    mode: str | None = None


@dataclass(frozen=True)
class RecordingView:
    """``off``, ``recording`` or ``paused`` (from the consent state) and the agent's pause."""

    state: str = "off"
    secure_pause: bool = False


@dataclass(frozen=True)
class TransferView:
    """The transfer of this call the agent started, as the page shows it."""

    mode: str
    target: str  # "agent:7", "queue:sales", "number:+65****4567" (masked)
    state: str
    reason: str | None = None


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
    #: A consult call: the agent who is transferring a caller to this agent (else None).
    from_agent: int | None = None
    transfer: TransferView | None = None


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


class TransferControl(Protocol):
    """Who owns a call's caller side and can move it (the agent bridge).

    Each method raises :class:`~voicegw.calls.agent_transfers.TransferError` when the
    request does not apply now.
    """

    async def start_transfer(
        self, call: AgentCall, mode: TransferMode, target: TransferTarget
    ) -> None: ...

    async def complete_transfer(self, call: AgentCall) -> None: ...

    async def cancel_transfer(self, call: AgentCall) -> None: ...


class PhoneLine(Protocol):
    """Rings agents' SIP phones (:class:`voicegw.calls.sip_agents.SipAgentPhones`)."""

    def ring(self, call: AgentCall, sip_user: str) -> None:
        """Start ringing ``sip_user``'s phone for ``call``; must not block."""
        ...

    def linked(self, agent_id: int) -> None:
        """The agent's phone link changed: look at its registration soon; must not block."""
        ...


class Outbox(Protocol):
    """The socket side of a session: must not block (queue and return)."""

    def deliver(self, event: AgentEvent) -> None: ...

    def close(self) -> None: ...


# --- state -------------------------------------------------------------------------------


class HoldSilence(LiveSource):
    """What an agent hears while the caller is held for a transfer: a source nobody feeds."""


@dataclass(eq=False)
class AgentCall:
    """One call offered to an agent, with its caller-side audio endpoints."""

    call_id: str
    tenant_id: str
    agent_id: int
    caller: str
    source: LiveSource
    sink: Callable[[bytes], None]
    state: CallState = CallState.RINGING
    muted: bool = False
    held: bool = False
    ended_reason: str | None = None
    secure_pause: bool = False
    consent: ConsentView = field(default_factory=ConsentView)
    #: What the consent layer says of the recording: ``off``, ``recording``, ``paused``.
    recording: str = "off"
    dtmf: list[str] = field(default_factory=list)
    leg: WebRtcLeg | None = None
    #: A consult call: the agent transferring a caller to this call's agent.
    from_agent: int | None = None
    #: The transfer this call's agent started, as shown on the page.
    transfer: TransferView | None = None
    #: The caller side's owner, who carries transfers out (None: no transfers).
    control: TransferControl | None = None
    #: The SIP login whose phone has this call (None: the softphone page).
    phone: str | None = None
    #: Wall-clock times (``time.time()``) for the supervisor view's durations.
    offered_at: float = field(default_factory=time.time)
    answered_at: float | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: Who is handed what the agent hears as it is made (the softphone's WebRTC leg).
    listener: Callable[[bytes], None] | None = None

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
            recording=RecordingView(state=self.recording, secure_pause=self.secure_pause),
            from_agent=self.from_agent,
            transfer=self.transfer,
        )

    def next_frame(self) -> bytes | None:
        """What the agent hears now: read through the call so a transfer can re-route it."""
        return self.source.next_frame()

    def listen(self, on_frame: Callable[[bytes], None] | None) -> None:
        """Hand what the agent hears to ``on_frame`` as it is made, across re-routes."""
        self.listener = on_frame
        self.source.listen(on_frame)

    def route(self, source: LiveSource, sink: Callable[[bytes], None]) -> None:
        """Point the agent's audio at other parties; a listener moves to the new source."""
        if self.listener is not None:
            self.source.listen(None)
            source.listen(self.listener)
        self.source, self.sink = source, sink

    def from_agent_audio(self, pcm: bytes) -> None:
        """The agent's 20 ms frame, to wherever the call is routed now."""
        self.sink(pcm)

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
    #: What the agent can take (queues ring only agents with all of their skills).
    skills: frozenset[str] = frozenset()
    #: When ``presence`` last changed (``time.time()``), for the supervisor view.
    presence_since: float = field(default_factory=time.time)
    #: The tenant SIP login whose phone rings for this agent (None: the softphone).
    phone: str | None = None
    #: Whether ``phone`` has a live registration now.
    registered: bool = False

    @property
    def reachable(self) -> bool:
        """Whether a call offered now could ring: a registered phone, else an open page."""
        return self.registered if self.phone is not None else self.outbox is not None

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
        #: Carries a page's secure pause to the consent layer (None: acknowledged only).
        self.on_secure_pause: Callable[[AgentCall, bool], Awaitable[None]] | None = None
        #: Rings agents' SIP phones (None: phone agents are never reachable).
        self.phones: PhoneLine | None = None

    # --- sessions ----------------------------------------------------------------------

    def session(self, agent_id: int) -> AgentSession | None:
        return self._sessions.get(agent_id)

    def sessions(self, tenant_id: str) -> list[AgentSession]:
        """The sessions of ``tenant_id``'s agents (read-only use: the supervisor view)."""
        return [s for s in self._sessions.values() if s.tenant_id == tenant_id]

    def calls(self, tenant_id: str) -> list[AgentCall]:
        """The calls of ``tenant_id`` offered to agents and not ended yet (read-only use)."""
        return [c for c in self._calls.values() if c.tenant_id == tenant_id]

    def available_agents(self, tenant_id: str, skills: frozenset[str] = frozenset()) -> list[int]:
        """Agents of ``tenant_id`` with all of ``skills`` that :meth:`offer_call` would ring now."""
        return [
            s.agent_id
            for s in self._sessions.values()
            if s.tenant_id == tenant_id
            and s.reachable
            and s.presence is Presence.AVAILABLE
            and s.call is None
            and skills <= s.skills
        ]

    def sign_in(
        self,
        tenant_id: str,
        agent_id: int,
        outbox: Outbox,
        skills: Iterable[str] = (),
    ) -> AgentSession:
        """Attach ``outbox`` to the agent's session, creating it or taking it over."""
        session = self._sessions.get(agent_id)
        if session is None:
            session = AgentSession(tenant_id=tenant_id, agent_id=agent_id)
            self._sessions[agent_id] = session
        session.skills = frozenset(skills)
        previous, session.outbox = session.outbox, outbox
        if previous is not None and previous is not outbox:
            log.info("agent %s signed in again: closing the older softphone", agent_id)
            previous.deliver(SessionReplaced())
            previous.close()
        return session

    def set_skills(self, tenant_id: str, agent_id: int, skills: Iterable[str]) -> None:
        """The agent's skills changed (admin API): queues use them from now on."""
        session = self._sessions.get(agent_id)
        if session is not None and session.tenant_id == tenant_id:
            session.skills = frozenset(skills)

    def link_phone(
        self, tenant_id: str, agent_id: int, sip_user: str | None, skills: Iterable[str] = ()
    ) -> None:
        """The agent's calls ring ``sip_user``'s phone from now on (None: the softphone again).

        The session is made if need be (available, as a fresh sign-in is); it is
        reachable once :meth:`phone_registered` says the login is registered.
        """
        session = self._sessions.get(agent_id)
        if session is not None and session.tenant_id != tenant_id:
            return
        if session is None:
            if sip_user is None:
                return
            session = AgentSession(tenant_id=tenant_id, agent_id=agent_id)
            self._sessions[agent_id] = session
        session.skills = frozenset(skills)
        if session.phone != sip_user:
            session.phone, session.registered = sip_user, False
            if sip_user is not None and self.phones is not None:
                self.phones.linked(agent_id)

    def phones_of(self) -> list[AgentSession]:
        """Sessions of agents reached at a SIP phone (every tenant; read-only use)."""
        return [s for s in self._sessions.values() if s.phone is not None]

    def phone_registered(self, agent_id: int, registered: bool) -> None:
        """Whether the agent's SIP login has a live registration (the registrar's view)."""
        session = self._sessions.get(agent_id)
        if session is not None and session.phone is not None:
            session.registered = registered

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
        source: LiveSource,
        sink: Callable[[bytes], None],
        control: TransferControl | None = None,
        from_agent: int | None = None,
    ) -> AgentCall:
        """Ring an available, connected agent of ``tenant_id``; raises ``agent_unavailable``.

        ``control`` (the caller side's owner) makes the call transferable;
        ``from_agent`` marks a consult call from that agent.
        """
        session = self._sessions.get(agent_id)
        if (
            session is None
            or session.tenant_id != tenant_id
            or not session.reachable
            or (session.phone is not None and self.phones is None)
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
            control=control,
            from_agent=from_agent,
            phone=session.phone,
        )
        self._calls[call.call_id] = call
        session.call = call
        log.info(
            "offering call %s from %s to agent %s", call.call_id, mask_number(caller), agent_id
        )
        session.tell(CallOffered(call.view()))
        if session.phone is not None and self.phones is not None:
            self.phones.ring(call, session.phone)
        return call

    def phone_answered(self, call: AgentCall) -> None:
        """The agent's SIP phone answered ``call`` (a 2xx): the same step as a page's answer."""
        session = self._sessions.get(call.agent_id)
        if session is None or session.call is not call or call.state is not CallState.RINGING:
            return
        self._move(session, PresenceEvent.CALL_ANSWERED)
        call.answered_at = time.time()
        call.state = self._next_state(call, CallAction.ANSWER)
        self._changed(call)

    async def end_call(self, call_id: str, reason: str) -> None:
        """The caller hung up (or the bridge failed): end the call wherever it is."""
        call = self._calls.get(call_id)
        if call is not None and call.state is not CallState.ENDED:
            await self._finish(call, reason)

    def call(self, call_id: str) -> AgentCall | None:
        """A call offered to an agent and not ended yet."""
        return self._calls.get(call_id)

    def reroute(
        self,
        call: AgentCall,
        source: LiveSource,
        sink: Callable[[bytes], None],
        *,
        caller: str | None = None,
        from_agent: int | None = None,
    ) -> None:
        """Point the agent's audio at other parties (a transfer); the WebRTC leg stays up.

        ``caller`` set: the call now carries that caller (a consult call that
        became the caller's call); ``from_agent`` is then cleared.
        """
        call.route(source, sink)
        if caller is not None:
            call.caller = caller
            call.from_agent = from_agent
        self._changed(call)

    def show_transfer(self, call: AgentCall, view: TransferView | None) -> None:
        call.transfer = view
        self._changed(call)

    def show_consent(
        self,
        call: AgentCall,
        consent: ConsentView,
        *,
        recording: str | None = None,
        secure_pause: bool | None = None,
    ) -> None:
        """The consent layer's state for the call (and a pause it enforced), on the page."""
        call.consent = consent
        if recording is not None:
            call.recording = recording
        if secure_pause is not None:
            call.secure_pause = secure_pause
        self._changed(call)

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
        if call.phone is not None and action not in _PHONE_PAGE_ACTIONS:
            raise SoftphoneError("invalid_state", "this call is on the agent's SIP phone")
        target = self._next_state(call, action)
        transfer = call.transfer
        if (
            action is CallAction.HANGUP
            and call.control is not None
            and transfer is not None
            and transfer.state in ("ringing", "consulting")
        ):
            # Hanging up while consulting hands the caller over; while ringing, it gives up.
            if transfer.state == "consulting":
                await self._transfer_step(call.control.complete_transfer(call))
                return
            await self._transfer_step(call.control.cancel_transfer(call))
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
        self._pressed(call, digits)

    @staticmethod
    def _pressed(call: AgentCall, digits: str) -> None:
        """Keys the agent pressed: signalled (``call.dtmf``) or in the browser's RTP
        (RFC 4733, from :class:`WebRtcLeg`); an inactive call's presses go nowhere."""
        if call.state is CallState.ACTIVE:
            call.dtmf.extend(digits)
            call._notify()

    async def transfer(
        self, session: AgentSession, call_id: str, mode: str, kind: str, target: str
    ) -> None:
        """Start a blind or warm transfer of the caller on ``call_id``."""
        call = self._call_of(session, call_id)
        if call.state not in MEDIA_STATES or call.from_agent is not None:
            raise SoftphoneError("invalid_state", "only a connected caller can be transferred")
        if call.control is None:
            raise SoftphoneError("transfer_unavailable", "this call cannot be transferred")
        try:
            parsed = TransferTarget(_enum(TargetKinds, kind, "target_kind"), target.strip())
            chosen = _enum(TransferModes, mode, "mode")
        except ValueError as exc:
            raise SoftphoneError("bad_field", str(exc)) from None
        if not parsed.value or len(parsed.value) > 64:
            raise SoftphoneError("invalid_target", "the target is empty or too long")
        await self._transfer_step(call.control.start_transfer(call, chosen, parsed))

    async def transfer_complete(self, session: AgentSession, call_id: str) -> None:
        call = self._call_of(session, call_id)
        if call.control is None or call.transfer is None:
            raise SoftphoneError("invalid_transfer_state", "no transfer to complete")
        await self._transfer_step(call.control.complete_transfer(call))

    async def transfer_cancel(self, session: AgentSession, call_id: str) -> None:
        call = self._call_of(session, call_id)
        if call.control is None or call.transfer is None:
            raise SoftphoneError("invalid_transfer_state", "no transfer to cancel")
        await self._transfer_step(call.control.cancel_transfer(call))

    @staticmethod
    async def _transfer_step(step: Awaitable[None]) -> None:
        try:
            await step
        except TransferError as exc:
            raise SoftphoneError(exc.code, exc.message) from None

    async def secure_pause(self, session: AgentSession, call_id: str, on: bool) -> None:
        """The agent's secure pause: to the consent layer (which enforces it), then the page."""
        call = self._call_of(session, call_id)
        if call.state not in MEDIA_STATES:
            raise SoftphoneError("invalid_state", "secure pause applies to a connected call")
        if self.on_secure_pause is not None:
            await self.on_secure_pause(call, on)
        call.secure_pause = on
        self._changed(call)

    async def negotiate(self, session: AgentSession, call_id: str, sdp: str) -> str:
        """The page's WebRTC offer for a connected call; replaces any earlier leg."""
        call = self._call_of(session, call_id)
        if call.phone is not None:
            raise SoftphoneError("invalid_state", "this call's audio is on the agent's SIP phone")
        if call.state not in MEDIA_STATES:
            raise SoftphoneError("invalid_state", "answer the call before sending media")
        old, call.leg = call.leg, None
        if old is not None:
            await old.close()
        # The leg reads and writes through the call, so a transfer re-routes live audio.
        leg = WebRtcLeg(
            self.webrtc,
            call,
            call.from_agent_audio,
            on_state=lambda _s: self._changed(call),
            on_dtmf=lambda digit: self._pressed(call, digit),
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
