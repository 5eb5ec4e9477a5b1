"""SRTP/SRTCP for one call leg keyed by SDES (RFC 4568, RFC 3711).

SDES gives each direction its own master key||salt: we encrypt with the key
we put in our ``a=crypto`` line and decrypt with the one the peer sent. Keys
come in as raw bytes and a suite name so this module stays free of SDP.

Nothing here raises into the socket path: a packet that fails authentication,
is replayed, or cannot be processed at all is counted and dropped (the caller
gets ``None``), so a forged or stale packet costs one counter increment.
"""

from __future__ import annotations

from dataclasses import dataclass

from pylibsrtp import Error, Policy, Session

__all__ = ["SUITE_PROFILES", "SrtpContext", "SrtpStats", "is_rtcp"]

#: RFC 4568 suite name -> libsrtp protection profile. AES-256-CM is not
#: exposed by pylibsrtp; offering it is turned down by ``srtp_suites``.
SUITE_PROFILES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}

# libsrtp's error text -> the counter that failure lands in (anything else: ``malformed``).
_FAILURE_COUNTERS: dict[str, str] = {
    "authentication failure": "auth_failures",
    "replay check failed (bad index)": "replays",
    "replay check failed (index too old)": "replays",
    "packet index is too old to consider": "replays",
}


def is_rtcp(packet: bytes) -> bool:
    """RFC 5761 §4: with rtcp-mux, second-byte values 192-223 are RTCP packet types."""
    return len(packet) > 1 and 192 <= packet[1] <= 223


@dataclass(slots=True)
class SrtpStats:
    """Packets dropped, by why. Sent/received counts live in the leg's stats."""

    auth_failures: int = 0
    replays: int = 0
    malformed: int = 0  # too short, too long or otherwise refused by libsrtp
    protect_failures: int = 0  # outbound: e.g. the same sequence number sent twice

    @property
    def dropped(self) -> int:
        return self.auth_failures + self.replays + self.malformed + self.protect_failures


class SrtpContext:
    """Inbound and outbound SRTP sessions of one leg. Build with :meth:`sdes`."""

    __slots__ = ("_inbound", "_outbound", "stats", "suite")

    def __init__(self, suite: str, local_key_salt: bytes, remote_key_salt: bytes) -> None:
        profile = SUITE_PROFILES.get(suite)
        if profile is None:
            raise ValueError(f"unsupported SRTP suite {suite}")
        self.suite = suite
        self.stats = SrtpStats()
        # Wildcard SSRCs: SDES keys the whole stream direction, whatever SSRC the
        # sender picks (and a relayed call may change it mid-call).
        self._outbound = Session(
            Policy(key=local_key_salt, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
        )
        self._inbound = Session(
            Policy(key=remote_key_salt, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
        )

    @classmethod
    def sdes(cls, suite: str, local_key_salt: bytes, remote_key_salt: bytes) -> SrtpContext:
        """Keys from the negotiated ``a=crypto`` lines: ours encrypts, theirs decrypts."""
        return cls(suite, local_key_salt, remote_key_salt)

    # -- outbound --------------------------------------------------------------

    def protect(self, packet: bytes) -> bytes | None:
        """SRTP for an RTP packet, or RTCP when it looks like RTCP (rtcp-mux)."""
        return self.protect_rtcp(packet) if is_rtcp(packet) else self.protect_rtp(packet)

    def protect_rtp(self, packet: bytes) -> bytes | None:
        try:
            return self._outbound.protect(packet)
        except (Error, ValueError):
            self.stats.protect_failures += 1
            return None

    def protect_rtcp(self, packet: bytes) -> bytes | None:
        try:
            return self._outbound.protect_rtcp(packet)
        except (Error, ValueError):
            self.stats.protect_failures += 1
            return None

    # -- inbound ---------------------------------------------------------------

    def unprotect(self, packet: bytes) -> bytes | None:
        """Plain RTP or RTCP from an SRTP/SRTCP datagram; None (counted) if it must be dropped."""
        try:
            if is_rtcp(packet):
                return self._inbound.unprotect_rtcp(packet)
            return self._inbound.unprotect(packet)
        except Error as error:
            counter = _FAILURE_COUNTERS.get(str(error), "malformed")
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            return None
        except ValueError:  # longer than libsrtp's buffer
            self.stats.malformed += 1
            return None
