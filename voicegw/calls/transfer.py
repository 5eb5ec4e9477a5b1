"""Call transfer requests (RFC 3515 REFER) as the call layer hands them on.

A SIP phone in a confirmed call sends REFER to transfer the other party
(blind: ``Refer-To: <sip:target>``; attended: with ``?Replaces=...``). The
call leg (:meth:`CallLeg._on_refer <voicegw.calls.sip_calls.CallLeg>`) checks
it, answers 202 Accepted, sends the first NOTIFY ("SIP/2.0 100 Trying") and
calls ``leg.on_transfer`` with a :class:`TransferRequested`. Whoever carries
the transfer out reports how the new call goes through
:meth:`TransferProgress.report`; each report becomes a NOTIFY to the phone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from voicegw.calls.routing import Route
from voicegw.sip.uri import URI

if TYPE_CHECKING:
    from voicegw.calls.sip_calls import CallLeg

log = logging.getLogger("voicegw.calls.transfer")

#: Sends one NOTIFY on the referring leg: (status, reason) -> whether it was sent.
NotifySender = Callable[[int, str], bool]


class TransferProgress:
    """The REFER's implicit subscription (RFC 3515 §2.4.4): reports become NOTIFYs.

    Report the new call's progress as SIP status lines: ``report(180, "Ringing")``
    while it rings (optional), then exactly one final status: ``report(200, "OK")``
    when the target answered, or the failure (``report(486, "Busy Here")``,
    ``report(603, "Declined")`` ...). The final report ends the subscription
    (``Subscription-State: terminated``); later reports are ignored and return
    False, as they do once the referring leg has ended. When the referrer asked
    for no subscription (RFC 4488 ``Refer-Sub: false``) reports are recorded and
    nothing is sent.
    """

    def __init__(self, send: NotifySender) -> None:
        self._send = send
        self.reported: list[int] = []

    @property
    def finished(self) -> bool:
        return any(status >= 200 for status in self.reported)

    def report(self, status: int, reason: str) -> bool:
        """Send a NOTIFY with ``SIP/2.0 <status> <reason>``; False if nothing was sent."""
        if self.finished or not 100 <= status <= 699:
            return False
        if not self._send(status, reason):
            return False
        self.reported.append(status)
        return True


@dataclass(frozen=True, slots=True)
class TransferRequested:
    """An accepted REFER (202 sent, "100 Trying" notified): carry the transfer out.

    ``leg`` is the leg whose peer sent the REFER (an agent's phone); the party
    to transfer is whoever is connected to that phone through the gateway
    (for a bridged call: the bridge's other leg). ``target`` was checked
    against the routing table with the referring peer's identity and
    ``route`` is the decision (the service and tenant that take the target),
    so the target is never outside what that identity could call itself.
    ``replaces`` (RFC 3891, attended transfer) names the dialog the new call
    replaces; ``referred_by`` is the Referred-By header to copy into the new
    INVITE. Report the outcome on ``progress``; the referring phone usually
    hangs up its leg after the final NOTIFY.
    """

    leg: CallLeg
    target: URI
    route: Route
    replaces: str | None
    referred_by: str | None
    progress: TransferProgress


#: Told of each accepted REFER on the event loop; keep it quick (start a task for the work).
TransferHandler = Callable[[TransferRequested], None]


__all__ = ["NotifySender", "TransferHandler", "TransferProgress", "TransferRequested"]
