"""A party fed with pushed PCM frames (a WebRTC agent) beside an RTP leg, tick by tick."""

from __future__ import annotations

import numpy as np
import pytest

from voicegw.media.codecs import PCMU
from voicegw.media.rtp import RtpPacket
from voicegw.media.session import LegConfig, MediaLeg, static_codecs
from voicegw.media.taps import CallTap, FrameFeed, TapFrame, TapHub

SOURCE = ("192.0.2.1", 4000)


def pcm(value: int) -> bytes:
    """A 20 ms frame whose every sample is ``value``: which frame it was shows in the output."""
    return np.full(160, value, dtype="<i2").tobytes()


def caller_leg() -> MediaLeg:
    return MediaLeg(LegConfig(static_codecs(PCMU), 0, remote_rtp=SOURCE), 0.0)


def tick(call_tap: CallTap, index: int) -> dict[str, TapFrame]:
    consumer = call_tap.tap.add_consumer()
    TapHub.tick((call_tap,), index, index * 0.02)
    frames = {f.party: f for f in consumer.drain()}
    call_tap.tap.remove_consumer(consumer)
    return frames


def test_a_tick_with_nothing_pushed_is_silence_there_and_later_frames_keep_their_ticks() -> None:
    feed = FrameFeed()
    call_tap = CallTap({"caller": caller_leg(), "agent": feed})
    pushed = {0: 100, 1: 200, 4: 500}  # nothing arrives for ticks 2 and 3
    heard = []
    for index in range(6):
        if index in pushed:
            feed.push(pcm(pushed[index]))
        frames = tick(call_tap, index)
        assert set(frames) == {"caller", "agent"}  # both parties at every tick
        agent = frames["agent"]
        assert (agent.index, agent.sample_rate, len(agent.pcm)) == (index, 8000, 320)
        heard.append(None if agent.filled else int(np.frombuffer(agent.pcm, "<i2")[0]))
        assert agent.filled == (agent.pcm == bytes(320))
    assert heard == [100, 200, None, None, 500, None]


def test_a_burst_keeps_only_the_newest_frames_so_the_delay_stays_bounded() -> None:
    feed = FrameFeed(max_frames=3)
    call_tap = CallTap({"agent": feed})
    for value in range(1, 6):  # five frames at once, after a network stall
        feed.push(pcm(value))
    assert (feed.dropped, feed.pending) == (2, 3)
    values = [int(np.frombuffer(tick(call_tap, i)["agent"].pcm, "<i2")[0]) for i in range(4)]
    assert values == [3, 4, 5, 0]


def test_frames_of_another_size_are_refused_and_counted() -> None:
    feed = FrameFeed()
    feed.push(bytes(318))
    feed.push(bytes(640))
    assert (feed.refused, feed.pending, feed.pushed) == (2, 0, 0)
    with pytest.raises(ValueError, match="max_frames"):
        FrameFeed(max_frames=0)


def test_a_feed_party_and_an_rtp_party_are_tapped_together_each_under_its_name() -> None:
    leg = caller_leg()
    leg.enable_pcm()
    feed = FrameFeed()
    call_tap = CallTap({"caller": leg, "agent": feed})
    speech = PCMU.encode(pcm(1000))
    assert leg.receive(bytes(RtpPacket(0, 0, 0, 0x1234, speech)), SOURCE, 0.0)
    feed.push(pcm(-1000))
    frames = [f for i in range(8) for f in tick(call_tap, i).values() if not f.filled]
    # Each party's one frame, once, each under its own name.
    assert sorted(f.party for f in frames) == ["agent", "caller"]
    assert [f.pcm for f in frames if f.party == "caller"] == [PCMU.decode(speech)]
    assert [f.pcm for f in frames if f.party == "agent"] == [pcm(-1000)]
