"""What a call leg reports and is: states, end reasons, events, and its RTP sockets.

Plain data shared by :mod:`voicegw.calls.sip_calls` (the legs) and
:mod:`voicegw.calls.outbound_invite` (placing calls), re-exported by the former.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from voicegw.media.session import DtmfReceived
from voicegw.media.srtp import SrtpContext
from voicegw.sip.offer_answer import NegotiatedAudio
from voicegw.sip.sdp import Direction

SDP = "application/sdp"
#: Methods we take inside a dialog (the Allow header of our 405s and requests).
ALLOW = "INVITE, ACK, CANCEL, BYE, INFO, OPTIONS, REFER, NOTIFY"


class CallState(enum.Enum):
    OFFERED = "offered"  # routed, SDP answered internally, nothing final sent
    RINGING = "ringing"  # 180 sent
    ANSWERED = "answered"  # 200 sent, waiting for the ACK
    CONFIRMED = "confirmed"  # ACK received
    ENDED = "ended"


class EndReason(enum.Enum):
    REMOTE_BYE = "remote-bye"
    LOCAL_HANGUP = "local-hangup"
    DURATION_LIMIT = "duration-limit"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    NO_ACK = "no-ack"
    SESSION_EXPIRED = "session-expired"
    FAILED = "failed"
    #: Our offer went out in the 200 (the INVITE had none) and the ACK's answer was unusable.
    BAD_ANSWER = "bad-answer"


#: The Reason header (RFC 3326) of the BYE we send for each way we end a call.
BYE_REASONS: dict[EndReason, str] = {
    EndReason.LOCAL_HANGUP: 'Q.850;cause=16;text="Normal call clearing"',
    EndReason.DURATION_LIMIT: 'Q.850;cause=16;text="Call duration limit"',
    EndReason.NO_ACK: 'SIP;cause=408;text="No ACK for 200"',
    EndReason.SESSION_EXPIRED: 'SIP;cause=408;text="Session expired"',
    EndReason.FAILED: 'Q.850;cause=41;text="Temporary failure"',
    EndReason.BAD_ANSWER: 'SIP;cause=488;text="No acceptable SDP answer"',
}


@dataclass(frozen=True, slots=True)
class CallConfirmed:
    """The caller's ACK arrived: media flows both ways."""


@dataclass(frozen=True, slots=True)
class HoldChanged:
    """A re-INVITE changed the stream's direction; ``held`` means we stopped sending.

    ``direction`` is ours on this leg (the peer offering sendonly makes it recvonly);
    ``by_peer`` is False when the re-INVITE was ours (:meth:`CallLeg.reinvite`).
    """

    held: bool
    direction: Direction
    by_peer: bool = True


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The leg ended; ``reason_header`` is the RFC 3326 Reason the peer's BYE carried."""

    reason: EndReason
    reason_header: str | None = None


CallEvent = CallConfirmed | HoldChanged | CallEnded | DtmfReceived


@dataclass(frozen=True, slots=True)
class CallFailed:
    """An outbound call that was not answered: the final status (408: no final response)."""

    status: int
    reason: str


def srtp_context(audio: NegotiatedAudio) -> SrtpContext | None:
    """The leg's SRTP keys when the negotiation chose SDES-SRTP, else None (plain RTP)."""
    local, remote = audio.local_crypto, audio.remote_crypto
    if local is None or remote is None:
        return None
    return SrtpContext.sdes(local.suite, local.key_salt, remote.key_salt)


__all__ = [
    "ALLOW",
    "BYE_REASONS",
    "SDP",
    "CallConfirmed",
    "CallEnded",
    "CallEvent",
    "CallFailed",
    "CallState",
    "EndReason",
    "HoldChanged",
    "srtp_context",
]
