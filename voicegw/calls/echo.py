"""The echo service: answers and sends the caller's own audio back.

The leg is relayed to itself (``transport.peer = transport``): every accepted
RTP packet goes straight back out from inside the receive callback, with the
payload untouched and our own SSRC, sequence numbers and timestamps from the
leg's sender. Nothing is decoded. It proves a phone's registration, routing,
SDP and both RTP directions in one call: operators dial sip:echo@<tenant realm>
to check a phone or a trunk.

With ``meter`` on, the caller's audio is also decoded through a tap (the same
path as the recorder's and the speech engines') and the call ends with an
``echo.heard`` log line: how many 20 ms frames of audio arrived, how many carried sound,
and the peak level, so an operator sees "no audio from this trunk" without
listening. The relay does not wait for the meter: the tap never blocks it.
``VOICEGW_ECHO_METER=1`` turns it on for ``voicegw serve``; the media benchmark
uses it to put tap decoding into its figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from voicegw.calls.routing import DEFAULT_ECHO_USER
from voicegw.calls.sip_calls import InboundCall
from voicegw.media.clock import MediaClock
from voicegw.media.taps import TapConsumer

logger = logging.getLogger(__name__)

#: The environment switch for the meter (the gateway's config file has no echo section).
METER_ENV = "VOICEGW_ECHO_METER"
#: The meter drains its tap this often: one wake-up per 200 ms, not one per frame.
_METER_PERIOD = 0.2
#: Frames queued for the meter (2 s); beyond that it loses its own oldest frames.
_METER_QUEUE = 100
#: A frame whose peak is below this (about -50 dBFS) counts as silence.
_AUDIBLE = 100


@dataclass(frozen=True, slots=True)
class EchoConfig:
    #: The Request-URI user of the service (``sip:echo@<tenant realm>``); give it to the Router.
    user: str = DEFAULT_ECHO_USER
    #: How long it rings before answering (0: answer at once).
    ring_delay: float = 0.0
    #: Decode the caller's audio through a tap and log what was heard (see the module doc).
    meter: bool = False

    @classmethod
    def from_environment(cls) -> EchoConfig:
        return cls(meter=os.environ.get(METER_ENV, "").strip().lower() in {"1", "true", "yes"})


@dataclass(frozen=True, slots=True)
class Heard:
    """What the meter measured on one call."""

    frames: int
    audible: int
    dropped: int
    peak: int

    @property
    def peak_dbfs(self) -> float | None:
        return None if self.peak <= 0 else 20 * math.log10(self.peak / 32768)


class EchoService:
    """A :data:`~voicegw.calls.sip_calls.CallHandler` that echoes the caller's audio."""

    def __init__(self, config: EchoConfig | None = None, clock: MediaClock | None = None) -> None:
        self.config = config or EchoConfig.from_environment()
        self._clock = clock
        #: The last metered call's figures (for tests and the benchmark).
        self.last_heard: Heard | None = None

    async def __call__(self, call: InboundCall) -> None:
        call.ring()
        if self.config.ring_delay > 0:
            # A CANCEL while ringing ends the call: stop waiting then.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.ended.wait(), self.config.ring_delay)
        if call.ended.is_set():
            return
        call.transport.peer = call.transport
        if not self.config.meter:
            call.answer()
            return
        frames = call.media(self._media_clock()).frames(_METER_QUEUE)
        call.answer()
        self.last_heard = heard = await _meter(frames, call.ended)
        logger.info(
            "echo.heard",
            extra={
                "call_id": call.id,
                "frames": heard.frames,
                "audible": heard.audible,
                "dropped": heard.dropped,
                "peak_dbfs": None if heard.peak_dbfs is None else round(heard.peak_dbfs, 1),
            },
        )

    def _media_clock(self) -> MediaClock:
        if self._clock is None:
            self._clock = MediaClock()
        self._clock.start()  # no-op while running
        return self._clock


def _peaks(frames: list[bytes]) -> npt.NDArray[np.int32]:
    """Each frame's peak magnitude; equal-length frames (the usual case) in one pass."""
    if len({len(pcm) for pcm in frames}) == 1:
        samples = np.frombuffer(b"".join(frames), dtype="<i2").reshape(len(frames), -1)
        high = samples.max(axis=1).astype(np.int32)
        low = samples.min(axis=1).astype(np.int32)
        peaks: npt.NDArray[np.int32] = np.maximum(high, -low)
        return peaks
    return np.array(
        [np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32)).max() for pcm in frames],
        dtype=np.int32,
    )


async def _meter(frames: TapConsumer, ended: asyncio.Event) -> Heard:
    """Drain the tap every 200 ms until the call ends; levels of a batch in one numpy call."""
    count = audible = peak = 0
    while True:
        finished = ended.is_set()
        # Received audio only: silence and concealment put in by the tap are not "heard".
        batch = [frame.pcm for frame in frames.drain() if not frame.filled and frame.pcm]
        if batch:
            peaks = _peaks(batch)
            count += len(batch)
            audible += int(np.count_nonzero(peaks >= _AUDIBLE))
            peak = max(peak, int(peaks.max()))
        if finished:
            return Heard(count, audible, frames.dropped, peak)
        # A plain sleep (a timer), not wait_for on the event (a task per wake-up).
        await asyncio.sleep(_METER_PERIOD)
