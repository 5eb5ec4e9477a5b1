"""The recording gate: the one place that decides whether a party's audio may be kept.

Every sink (recorder, speech-to-text stream, transcript writer) asks the same
gate, so a pause or withdrawal stops all of them at once (DESIGN §4.1):

* the recorder passes each frame through :meth:`RecordingGate.admit`, which
  returns the frame or silence of the same length, so the recording keeps its
  timing and every blanked stretch is listed as a :class:`SuppressedInterval`;
* streaming sinks check :meth:`RecordingGate.sinks_open` before sending;
* a stretch no frame came for (media-clock ticks skipped after a stall) is
  counted with :meth:`RecordingGate.advance`, so positions and intervals after
  it stay on the call's media time.

A frame is admitted only if recording is allowed for the *whole* frame
``[t, t + duration)``: a pause that starts inside a frame blanks that frame,
so a change takes effect no later than the next frame. A party the gate does
not know is never recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from voicegw.consent.machine import ConsentEvent, ConsentMachine, Pause, Resume, Withdraw

UNKNOWN_PARTY_REASON = "unknown_party"


@dataclass(frozen=True)
class SuppressedInterval:
    """A stretch of one party's channel replaced by silence. Samples: [start, end)."""

    party: str
    reason: str
    start_time: float
    end_time: float
    start_sample: int
    end_sample: int

    @property
    def samples(self) -> int:
        return self.end_sample - self.start_sample


@dataclass
class _Channel:
    machine: ConsentMachine | None
    position: int = 0  # samples admitted or blanked so far
    open_interval: SuppressedInterval | None = None


class RecordingGate:
    """Per-party consent state and the frame-level gate over it (pure, no I/O)."""

    def __init__(self, *, sample_rate: int = 8000, bytes_per_sample: int = 2) -> None:
        self.sample_rate = sample_rate
        self.bytes_per_sample = bytes_per_sample
        self._channels: dict[str, _Channel] = {}
        self._closed: dict[str, list[SuppressedInterval]] = {}
        self._silence: dict[int, bytes] = {}

    def __repr__(self) -> str:
        return f"RecordingGate(parties={sorted(self._channels)!r})"

    def add_party(self, machine: ConsentMachine) -> None:
        """Put a party's consent machine under the gate's control."""
        channel = self._channels.get(machine.party)
        if channel is not None and channel.machine is not None:
            raise ValueError("party already has a consent machine")
        if channel is None:
            self._channels[machine.party] = _Channel(machine)
            self._closed[machine.party] = []
        else:
            channel.machine = machine

    def machine(self, party: str) -> ConsentMachine | None:
        channel = self._channels.get(party)
        return channel.machine if channel is not None else None

    # --- sinks -----------------------------------------------------------------

    def sinks_open(self, party: str, spoken_at: float | None = None) -> bool:
        """Whether any sink may take this party's audio or text right now.

        With ``spoken_at`` (a frame's media time) the audio must also have been
        allowed when it was spoken, as :meth:`admit` asks for the recording: an
        input that opens the gate (a "yes", a resume) is post-dated on the media
        clock by the jitter buffer's delay, and the frames still in the buffer
        from before it stay out of every sink, not only out of the file.
        """
        machine = self.machine(party)
        return (
            machine is not None
            and machine.may_record_now()
            and (spoken_at is None or machine.may_record(spoken_at))
        )

    def admit(self, party: str, frame: bytes, t: float) -> bytes:
        """``frame`` if it may be recorded, else silence of the same length."""
        if len(frame) % self.bytes_per_sample:
            raise ValueError("frame length is not a whole number of samples")
        if self._pass(party, len(frame) // self.bytes_per_sample, t):
            return frame
        silence = self._silence.get(len(frame))
        if silence is None:
            silence = self._silence[len(frame)] = bytes(len(frame))
        return silence

    def advance(self, party: str, samples: int, t: float) -> None:
        """``samples`` of ``party`` from ``t`` that never came (media-clock ticks skipped).

        The sink writes silence there; the gate counts them like an admitted frame,
        so every later position (and interval) stays on the call's media time, and
        lists them under the consent state of the stretch when it was not allowed.
        """
        if samples < 0:
            raise ValueError("samples must not be negative")
        if samples:
            self._pass(party, samples, t)

    def _pass(self, party: str, samples: int, t: float) -> bool:
        """Whether ``samples`` from ``t`` may be kept; moves the party's position past them."""
        channel = self._channels.get(party)
        if channel is None:
            channel = self._channels[party] = _Channel(None)
            self._closed[party] = []
        end = t + samples / self.sample_rate
        if channel.machine is None:
            allowed, reason = False, UNKNOWN_PARTY_REASON
        else:
            allowed, state = channel.machine.status_during(t, end)
            reason = state.value
        start_sample = channel.position
        channel.position += samples
        if allowed:
            self._close_interval(party, channel)
            return True
        self._extend_interval(party, channel, reason, t, end, start_sample)
        return False

    def _extend_interval(
        self, party: str, channel: _Channel, reason: str, t: float, end: float, start: int
    ) -> None:
        current = channel.open_interval
        if current is not None and current.reason == reason and current.end_sample == start:
            channel.open_interval = SuppressedInterval(
                party, reason, current.start_time, end, current.start_sample, channel.position
            )
            return
        self._close_interval(party, channel)
        channel.open_interval = SuppressedInterval(party, reason, t, end, start, channel.position)

    def _close_interval(self, party: str, channel: _Channel) -> None:
        if channel.open_interval is not None:
            self._closed[party].append(channel.open_interval)
            channel.open_interval = None

    def intervals(self, party: str) -> tuple[SuppressedInterval, ...]:
        """Every blanked stretch of ``party`` so far, including one still running."""
        channel = self._channels.get(party)
        if channel is None:
            return ()
        running = (channel.open_interval,) if channel.open_interval is not None else ()
        return (*self._closed[party], *running)

    def position(self, party: str) -> int:
        """Samples of ``party`` that passed the gate (admitted or blanked)."""
        channel = self._channels.get(party)
        return channel.position if channel is not None else 0

    # --- call-wide controls ------------------------------------------------------

    def _machines(self) -> list[ConsentMachine]:
        return [c.machine for c in self._channels.values() if c.machine is not None]

    def pause_all(self, now: float) -> tuple[ConsentEvent, ...]:
        """Secure pause for every party (e.g. while a card number is read)."""
        return tuple(e for m in self._machines() for e in m.handle(Pause(now)))

    def resume_all(self, now: float) -> tuple[ConsentEvent, ...]:
        return tuple(e for m in self._machines() for e in m.handle(Resume(now)))

    def withdraw(self, party: str, now: float) -> tuple[ConsentEvent, ...]:
        machine = self.machine(party)
        return machine.handle(Withdraw(now)) if machine is not None else ()
