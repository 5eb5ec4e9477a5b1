"""What the consent flow (and other per-call features) need from a call's media.

:class:`CallMedia` is the small interface: play a prompt to the caller, the
caller's key presses, every party's PCM on the media clock, and the end of the
call. :class:`RtpCallMedia` implements it over real RTP legs
(:class:`~voicegw.media.transport.LegTransport` + :class:`~voicegw.media.clock.MediaClock`
+ :class:`~voicegw.media.taps.CallTap` + :class:`~voicegw.media.playback.Playback`),
so the SIP call layer hands its legs in and a test can drive it with a plain
UDP socket on loopback.

Key presses arrive by RFC 4733 telephone events on the caller's leg or, for
carriers that send them in signalling, by SIP INFO (:meth:`RtpCallMedia.push_digit`):
both become the same :class:`KeyPress`, stamped with the media clock.

The agent party's audio comes from an RTP leg (:meth:`RtpCallMedia.attach_agent`)
or, for an agent whose audio is not RTP we hold (a browser's WebRTC leg, decoded
to 8 kHz PCM), from frames pushed as they arrive (:meth:`RtpCallMedia.push_agent`)
into a :class:`~voicegw.media.taps.FrameFeed`. Either way the agent's frames
reach :meth:`RtpCallMedia.frames` under the one agent party, on the same tick
indexes as the caller's, so the consent gate, the recorder's agent channel and
transcription treat both kinds alike (and the tenant's ``agent_recording``
setting, which the gate applies to the agent party, holds for both).

What the agent channel carries is what the caller is sent from the agent
side, nothing else: whoever pushes decides that (the agent bridge pushes an
agent's audio only while that agent is connected to the caller, so a
transfer's hold and consult leave the channel silent and the new agent is
heard from the moment they are connected). A tick without a pushed frame is
silence at that tick; the feed never shifts later audio to fill a gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from voicegw.media.clock import MediaClock
from voicegw.media.playback import Playback, PlaybackSource
from voicegw.media.session import DtmfReceived, MediaEvent, RemoteBye
from voicegw.media.taps import CallTap, FrameFeed, Tap, TapConsumer
from voicegw.media.transport import LegTransport

__all__ = ["CallMedia", "KeyPress", "KeyPresses", "RtpCallMedia"]

#: Key presses kept for a reader that is not reading yet (a prompt being synthesised).
_MAX_QUEUED_KEYS = 64


@dataclass(frozen=True, slots=True)
class KeyPress:
    """One DTMF digit from a party, at ``at`` on the media clock."""

    party: str
    digit: str
    at: float


class KeyPresses:
    """A bounded queue of key presses; ``async for`` ends when the call ends."""

    def __init__(self, maxsize: int = _MAX_QUEUED_KEYS) -> None:
        self._queue: asyncio.Queue[KeyPress | None] = asyncio.Queue()
        self._maxsize = maxsize
        self.dropped = 0
        self._closed = False

    def offer(self, key: KeyPress) -> None:
        if self._closed:
            return
        if self._queue.qsize() >= self._maxsize:
            self._queue.get_nowait()  # a key-mashing caller loses the oldest keys, not memory
            self.dropped += 1
        self._queue.put_nowait(key)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[KeyPress]:
        return self

    async def __anext__(self) -> KeyPress:
        key = await self._queue.get()
        if key is None:
            self._queue.put_nowait(None)  # later readers end too
            raise StopAsyncIteration
        return key


class CallMedia(Protocol):
    """The media of one call, as the consent flow sees it."""

    @property
    def clock(self) -> MediaClock:
        """The clock every frame, key press and decision of the call is timed with."""
        ...

    @property
    def parties(self) -> tuple[str, ...]:
        """Parties whose frames :meth:`frames` delivers (caller first)."""
        ...

    def play(self, source: PlaybackSource) -> Playback:
        """Start playing ``source`` to the caller; cancel the result to stop it."""
        ...

    def keys(self) -> KeyPresses:
        """The caller's key presses from now on (one reader)."""
        ...

    def frames(self, maxsize: int = 50) -> TapConsumer:
        """A new consumer of every party's 20 ms PCM frames; closed when the call ends."""
        ...

    @property
    def ended(self) -> asyncio.Event:
        """Set when the call is over (hang-up by either side)."""
        ...


class RtpCallMedia:
    """:class:`CallMedia` over RTP legs. The agent may join later: by its RTP leg
    (:meth:`attach_agent`) or by pushed frames (:meth:`push_agent`), not both.

    Event handlers already set on the caller's transport keep receiving every
    event: this class only listens alongside. RTCP BYE from the caller counts as
    the caller hanging up; the SIP layer calls :meth:`hang_up` on BYE/CANCEL.
    """

    def __init__(
        self,
        caller: LegTransport,
        clock: MediaClock,
        *,
        caller_party: str = "caller",
        agent_party: str = "agent",
    ) -> None:
        self.caller = caller
        self.agent: LegTransport | None = None
        #: The agent's pushed frames (made by the first :meth:`push_agent`).
        self.agent_feed: FrameFeed | None = None
        self.caller_party = caller_party
        self.agent_party = agent_party
        self._clock = clock
        self._tap = Tap()
        self._taps = [CallTap({caller_party: caller.leg}, self._tap)]
        self._taps[0].attach(clock)
        self._keys = KeyPresses()
        self._ended = asyncio.Event()
        self._previous_handler = caller.on_event
        caller.on_event = self._on_caller_event

    def __repr__(self) -> str:
        return f"RtpCallMedia(parties={self.parties!r}, ended={self._ended.is_set()})"

    @property
    def clock(self) -> MediaClock:
        return self._clock

    @property
    def parties(self) -> tuple[str, ...]:
        return tuple(party for tap in self._taps for party in tap.parties)

    @property
    def ended(self) -> asyncio.Event:
        return self._ended

    def attach_agent(self, agent: LegTransport) -> None:
        """The agent's leg joined: its audio is tapped from the next tick on."""
        if self.agent is not None or self.agent_feed is not None:
            raise RuntimeError("an agent leg is already attached")
        self.agent = agent
        self._add_tap(CallTap({self.agent_party: agent.leg}, self._tap))

    def push_agent(self, pcm: bytes) -> None:
        """One 20 ms frame (16-bit, 8 kHz) of the agent's audio from a non-RTP source.

        Called as frames arrive; each tick takes the oldest waiting frame (see
        :class:`~voicegw.media.taps.FrameFeed`). Ignored once the call is over, and
        when the agent's audio already comes from an RTP leg.
        """
        feed = self.agent_feed
        if feed is None:
            if self.agent is not None or self._ended.is_set():
                return
            feed = self.agent_feed = FrameFeed()
            self._add_tap(CallTap({self.agent_party: feed}, self._tap))
        feed.push(pcm)

    def _add_tap(self, tap: CallTap) -> None:
        tap.attach(self._clock)
        self._taps.append(tap)

    def play(self, source: PlaybackSource) -> Playback:
        playback = Playback(source, self.caller.send_pcm)
        playback.start(self._clock)
        return playback

    def keys(self) -> KeyPresses:
        return self._keys

    def frames(self, maxsize: int = 50) -> TapConsumer:
        return self._tap.add_consumer(maxsize)

    def push_digit(self, digit: str, party: str | None = None) -> None:
        """A key press signalled outside RTP (SIP INFO ``application/dtmf-relay``)."""
        self._keys.offer(KeyPress(party or self.caller_party, digit, self._clock.now()))

    def hang_up(self) -> None:
        """The call is over: stop tapping, end the key stream, wake whoever waits."""
        if self._ended.is_set():
            return
        for tap in self._taps:
            tap.detach()
        self._keys.close()
        self._ended.set()

    def _on_caller_event(self, event: MediaEvent) -> None:
        if isinstance(event, DtmfReceived) and event.digit.digit is not None:
            self.push_digit(event.digit.digit)
        elif isinstance(event, RemoteBye):
            self.hang_up()
        if self._previous_handler is not None:
            self._previous_handler(event)
