"""The one error the SIP grammar raises.

Any bytes handed to the parser either become a message or raise
:class:`SipParseError`; nothing else escapes. The error says what to answer
(``status``) and whether answering is possible at all (``can_respond``): a
broken response, an ACK, or a request whose Via/From/To/Call-ID/CSeq cannot
be recovered is dropped silently (RFC 3261 §8.2, §17.2).
"""

from __future__ import annotations


class SipParseError(Exception):
    """Bytes that are not a SIP message we accept.

    ``reason`` is a short, static description safe to log and to echo in a
    Warning header: it never contains bytes from the message itself, so no
    phone number or credential can leak through it.
    """

    def __init__(self, reason: str, status: int = 400, can_respond: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.can_respond = can_respond

    def with_can_respond(self, can_respond: bool) -> SipParseError:
        """The same failure, re-judged once the caller knows whether a reply is possible."""
        return SipParseError(self.reason, self.status, can_respond)

    def __repr__(self) -> str:
        return (
            f"SipParseError({self.reason!r}, status={self.status}, can_respond={self.can_respond})"
        )
