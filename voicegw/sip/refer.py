"""RFC 3515 REFER, sans-IO: reading a REFER and writing the NOTIFYs that report on it.

:func:`read_refer` checks a REFER the way §2.4.1 asks (exactly one Refer-To,
a SIP or tel target) and returns a :class:`ReferTo`; :func:`notify_headers`
and :func:`sipfrag` build the implicit subscription's NOTIFY (§2.4.4-2.4.5):
Event ``refer;id=<REFER CSeq>``, a ``message/sipfrag`` body with the status
line of the transfer's progress, and the subscription terminated with the
final one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from voicegw.sip.errors import SipParseError
from voicegw.sip.headers import NameAddress
from voicegw.sip.message import SipRequest
from voicegw.sip.uri import URI, SipURI, TelURI

SIPFRAG = "message/sipfrag;version=2.0"
#: How long (s) the implicit subscription lasts before its final NOTIFY (§2.4.4 leaves it to us).
SUBSCRIPTION_SECONDS = 60


class ReferError(ValueError):
    """A REFER we cannot act on: ``status`` and ``reason`` are the response to send."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ReferTo:
    """What a REFER asks for. ``target`` has the URI headers (Replaces ...) taken off."""

    target: URI
    #: The RFC 3891 Replaces value (``call-id;to-tag=..;from-tag=..``) for an attended transfer.
    replaces: str | None
    #: The Referred-By header as sent (RFC 3892), for the new call's INVITE; None if absent.
    referred_by: str | None
    #: The REFER's CSeq number: the ``id`` of its ``Event: refer`` (§2.4.6).
    event_id: int
    #: False when the referrer asked for no implicit subscription (RFC 4488 ``Refer-Sub:
    #: false``): the 202 says so and no NOTIFY is sent.
    subscription: bool = True


def read_refer(request: SipRequest) -> ReferTo:
    """§2.4.1: the one Refer-To of ``request``; :class:`ReferError` (400/416) otherwise."""
    values = request.headers.values("Refer-To")
    if len(values) != 1:
        raise ReferError(400, "Exactly One Refer-To Required")
    try:
        target = NameAddress.parse(values[0]).uri
    except SipParseError:
        raise ReferError(400, "Malformed Refer-To") from None
    if not isinstance(target, SipURI | TelURI):
        raise ReferError(416, "Unsupported URI Scheme")
    replaces: str | None = None
    if isinstance(target, SipURI) and target.headers:
        found = [v for k, v in target.headers if k.lower() == "replaces"]
        replaces = found[0] if found else None
        # The new call is placed to the bare target; Replaces goes in its own header.
        target = dataclasses.replace(target, headers=())
    refer_sub = (request.headers.get("Refer-Sub") or "true").strip().lower()
    return ReferTo(
        target,
        replaces,
        request.headers.get("Referred-By"),
        request.cseq.seq,
        subscription=refer_sub != "false",
    )


def sipfrag(status: int, reason: str) -> bytes:
    """The NOTIFY body: the status line of the transferred call's progress (§2.4.5)."""
    return f"SIP/2.0 {status} {reason}\r\n".encode()


def notify_headers(event_id: int, status: int) -> tuple[tuple[str, str], ...]:
    """Event, Subscription-State and Content-Type of the NOTIFY that reports ``status``.

    A final status (>= 200) terminates the implicit subscription (§2.4.5, RFC 6665 §4.1.3).
    """
    state = (
        f"active;expires={SUBSCRIPTION_SECONDS}" if status < 200 else "terminated;reason=noresource"
    )
    return (
        ("Event", f"refer;id={event_id}"),
        ("Subscription-State", state),
        ("Content-Type", SIPFRAG),
    )


__all__ = [
    "SIPFRAG",
    "SUBSCRIPTION_SECONDS",
    "ReferError",
    "ReferTo",
    "notify_headers",
    "read_refer",
    "sipfrag",
]
