"""The transaction layer (RFC 3261 §17): matches messages to the four machines,
answers CANCEL (§9.2), and hands back what to send, events and one deadline.

Used like aioquic's ``QuicConnection``::

    layer.receive_request(request, source, now)   # or receive_response(...)
    layer.handle_timer(now)                       # when get_timer() is due
    for out in layer.messages_to_send(): transport.send(bytes(out.message), out.destination)
    while (event := layer.next_event()) is not None: tu.handle(event)
    timer.rearm(layer.get_timer())

Nothing here reads the clock or does I/O. A transport that fails to send an
``Outgoing`` reports it with :meth:`TransactionLayer.transport_error`.

Not done here, by design: ACK for a 2xx and 2xx retransmission are the
dialog's (§13.2.2.4, §13.3.1.4): send them with :meth:`send_stateless`.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import deque
from dataclasses import dataclass

from voicegw.sip.message import SipRequest, SipResponse, make_response
from voicegw.sip.timers import TimerConfig
from voicegw.sip.transaction import Destination, Signal, State, Transaction
from voicegw.sip.transaction_client import (
    ClientTransaction,
    InviteClientTransaction,
    NonInviteClientTransaction,
)
from voicegw.sip.transaction_events import (
    CancelReceived,
    Event,
    Outgoing,
    RequestReceived,
    ResponseReceived,
    TransactionId,
    TransactionTerminated,
    TransactionTimedOut,
    TransportFailed,
)
from voicegw.sip.transaction_keys import (
    ClientKey,
    LegacyServerKey,
    TransactionKey,
    client_key,
    legacy_to_tag_matches,
    response_key,
    server_key,
)
from voicegw.sip.transaction_messages import build_ack, build_cancel, response_destination
from voicegw.sip.transaction_server import (
    InviteServerTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
)

# The TU imports the whole surface from here.
__all__ = [
    "CancelReceived",
    "Event",
    "Outgoing",
    "Overload",
    "RequestReceived",
    "ResponseReceived",
    "TransactionId",
    "TransactionLayer",
    "TransactionTerminated",
    "TransactionTimedOut",
    "TransportFailed",
    "build_ack",
    "build_cancel",
    "response_destination",
]


class Overload(enum.Enum):
    """What to do with a new request when the server transaction cap is reached."""

    REJECT = "503"  # answer 503 + Retry-After statelessly
    DROP = "drop"  # say nothing (cheapest under a flood)


@dataclass(eq=False, slots=True)
class _Client:
    tx: ClientTransaction
    request: SipRequest
    key: ClientKey
    cancel_pending: bool = False  # §9.1: CANCEL asked for before any provisional
    cancel_sent: bool = False


@dataclass(eq=False, slots=True)
class _Server:
    tx: ServerTransaction
    request: SipRequest
    key: TransactionKey
    source: Destination
    response_to_tag: str | None = None  # for RFC 2543 ACK matching


class TransactionLayer:
    """All client and server transactions of one SIP endpoint."""

    def __init__(
        self,
        config: TimerConfig | None = None,
        *,
        max_server_transactions: int = 10_000,
        overload: Overload = Overload.REJECT,
        retry_after: int = 5,
    ) -> None:
        self.config = config or TimerConfig()
        self.max_server_transactions = max_server_transactions
        self.overload = overload
        self.retry_after = retry_after
        self.overload_count = 0  # requests refused or dropped because of the cap

        self._ids = itertools.count(1)
        self._clients: dict[TransactionId, _Client] = {}
        self._servers: dict[TransactionId, _Server] = {}
        self._client_index: dict[ClientKey, TransactionId] = {}
        self._server_index: dict[TransactionKey, TransactionId] = {}
        self._outbox: list[Outgoing] = []
        self._events: deque[Event] = deque()
        # Lazy-deletion heap: an entry is live only while it equals _scheduled[id].
        self._heap: list[tuple[float, TransactionId]] = []
        self._scheduled: dict[TransactionId, float] = {}

    # --- the sans-IO surface ---------------------------------------------------------------

    def messages_to_send(self) -> list[Outgoing]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        while self._heap:
            at, tid = self._heap[0]
            if self._scheduled.get(tid) == at:
                return at
            heapq.heappop(self._heap)
        return None

    def handle_timer(self, now: float) -> None:
        while (at := self.get_timer()) is not None and at <= now:
            _, tid = heapq.heappop(self._heap)
            del self._scheduled[tid]
            tx = self._tx(tid)
            if tx is None:
                continue
            if tx.handle_timer(now) is Signal.TIMEOUT:
                self._events.append(TransactionTimedOut(tid))
            self._after(tid)

    def state_of(self, transaction: TransactionId) -> State | None:
        """The state of a live transaction, None once it has gone."""
        tx = self._tx(transaction)
        return None if tx is None else tx.state

    def transport_error(self, transaction: TransactionId, now: float) -> None:
        """§17.1.4 / §17.2.4: the transport could not send for ``transaction``."""
        tx = self._tx(transaction)
        if tx is None or tx.terminated:
            return
        tx.transport_error()
        self._events.append(TransportFailed(transaction))
        self._after(transaction)

    def send_stateless(self, message: SipRequest | SipResponse, destination: Destination) -> None:
        """Send outside any transaction: ACK for a 2xx, a dialog's 2xx retransmission."""
        self._outbox.append(Outgoing(message, destination, None))

    # --- client side ------------------------------------------------------------------------

    def send_request(
        self, request: SipRequest, destination: Destination, now: float
    ) -> TransactionId:
        """Start a client transaction for ``request`` (not ACK: see send_stateless)."""
        if request.method == "ACK":
            raise ValueError("ACK is not a transaction: use send_stateless")
        key = client_key(request)
        if key in self._client_index:
            raise ValueError("a client transaction with this branch and method exists")
        tid = TransactionId(next(self._ids))
        tx: ClientTransaction
        if request.method == "INVITE":
            tx = InviteClientTransaction.start(request, destination, self.config, now)
        else:
            tx = NonInviteClientTransaction.start(request, destination, self.config, now)
        self._clients[tid] = _Client(tx, request, key)
        self._client_index[key] = tid
        self._after(tid)
        return tid

    def cancel(self, transaction: TransactionId, now: float) -> bool:
        """§9.1: cancel a pending INVITE. Sent at once in Proceeding; before any
        provisional it is deferred until one arrives. False when there is nothing
        left to cancel (not an INVITE, final response already received)."""
        client = self._clients.get(transaction)
        if client is None or not isinstance(client.tx, InviteClientTransaction):
            return False
        if client.cancel_pending or client.cancel_sent:
            return True
        if client.tx.state is State.CALLING:
            client.cancel_pending = True
            return True
        if client.tx.state is State.PROCEEDING:
            self._send_cancel(client, now)
            self._after(transaction)
            return True
        return False

    def receive_response(self, response: SipResponse, source: Destination, now: float) -> None:
        """A response from the transport; one matching no transaction is dropped.

        §17.1.3 matches on headers only, so ``source`` does not take part: a
        response may legitimately come from another address than we sent to.
        """
        key = response_key(response)
        tid = None if key is None else self._client_index.get(key)
        if tid is None:
            return
        client = self._clients[tid]
        request = client.request
        passed = client.tx.receive_response(
            response.status, now, make_ack=lambda: build_ack(request, response)
        )
        if passed:
            self._events.append(ResponseReceived(tid, response))
        if client.cancel_pending:
            if response.status < 200:
                self._send_cancel(client, now)
            else:
                client.cancel_pending = False  # a final response won the race
        self._after(tid)

    # --- server side ------------------------------------------------------------------------

    def receive_request(self, request: SipRequest, source: Destination, now: float) -> None:
        """A request from the transport: a retransmission, an ACK, a CANCEL or a new one."""
        if not request.via:
            return  # the parser never yields this; a hand-built message gets no answer either
        tid = self._match_server(request)
        if tid is not None:
            self._absorb(tid, request, now)
        elif request.method == "ACK":
            # No INVITE transaction: the ACK for a 2xx, which belongs to the dialog.
            self._events.append(RequestReceived(None, request, source))
        elif len(self._servers) >= self.max_server_transactions:
            self._refuse(request, source)
        elif request.method == "CANCEL":
            self._receive_cancel(request, source, now)
        else:
            new = self._new_server(request, source, now)
            self._events.append(RequestReceived(new, request, source))
            self._after(new)

    def send_response(self, transaction: TransactionId, response: SipResponse, now: float) -> bool:
        """Send the TU's response in ``transaction``; False if the state forbids it
        (e.g. a 487 after a 200 already went out) or the transaction is gone."""
        server = self._servers.get(transaction)
        if server is None:
            return False
        sent = server.tx.send_response(response, response.status, now)
        if sent and response.status >= 200:
            server.response_to_tag = response.to.tag
        self._after(transaction)
        return sent

    # --- internals --------------------------------------------------------------------------

    def _tx(self, tid: TransactionId) -> Transaction | None:
        entry = self._clients.get(tid) or self._servers.get(tid)
        return None if entry is None else entry.tx

    def _after(self, tid: TransactionId) -> None:
        """Collect what a transaction queued, then reschedule or forget it."""
        entry = self._clients.get(tid) or self._servers.get(tid)
        if entry is None:
            return
        destination = entry.tx.destination
        for message in entry.tx.take_sends():
            assert isinstance(message, SipRequest | SipResponse)
            self._outbox.append(Outgoing(message, destination, tid))
        if entry.tx.terminated:
            self._forget(tid)
            self._events.append(TransactionTerminated(tid))
            return
        at = entry.tx.get_timer()
        if at is None:
            self._scheduled.pop(tid, None)
        elif self._scheduled.get(tid) != at:
            self._scheduled[tid] = at
            heapq.heappush(self._heap, (at, tid))

    def _forget(self, tid: TransactionId) -> None:
        self._scheduled.pop(tid, None)
        client = self._clients.pop(tid, None)
        if client is not None:
            self._client_index.pop(client.key, None)
        server = self._servers.pop(tid, None)
        if server is not None and self._server_index.get(server.key) == tid:
            del self._server_index[server.key]

    def _send_cancel(self, client: _Client, now: float) -> None:
        client.cancel_pending = False
        client.cancel_sent = True
        assert isinstance(client.tx, InviteClientTransaction)
        client.tx.cancel_sent(now)
        self.send_request(build_cancel(client.request), client.tx.destination, now)

    def _match_server(self, request: SipRequest, method: str | None = None) -> TransactionId | None:
        key = server_key(request, method)
        tid = self._server_index.get(key)
        if tid is None:
            return None
        server = self._servers[tid]
        if isinstance(key, LegacyServerKey) and not legacy_to_tag_matches(
            request, server.request.to.tag, server.response_to_tag
        ):
            return None
        return tid

    def _absorb(self, tid: TransactionId, request: SipRequest, now: float) -> None:
        server = self._servers[tid]
        if request.method == "ACK":
            assert isinstance(server.tx, InviteServerTransaction)
            if server.tx.receive_ack(now):
                self._events.append(RequestReceived(tid, request, server.source))
        else:
            server.tx.receive_request(now)
        self._after(tid)

    def _new_server(self, request: SipRequest, source: Destination, now: float) -> TransactionId:
        tid = TransactionId(next(self._ids))
        reply_to = response_destination(request, source)
        tx: ServerTransaction
        if request.method == "INVITE":
            tx = InviteServerTransaction.start(
                make_response(request, 100), reply_to, self.config, now
            )
        else:
            tx = NonInviteServerTransaction.start(reply_to, self.config, now)
        key = server_key(request)
        self._servers[tid] = _Server(tx, request, key, source)
        self._server_index[key] = tid
        return tid

    def _receive_cancel(self, cancel: SipRequest, source: Destination, now: float) -> None:
        """§9.2: 200 to a CANCEL that matches an INVITE transaction, 481 otherwise;
        the TU hears of it only while the INVITE still awaits its final response."""
        tid = self._new_server(cancel, source, now)
        invite = self._match_server(cancel, method="INVITE")
        status = 481 if invite is None else 200
        self._servers[tid].tx.send_response(make_response(cancel, status), status, now)
        if invite is not None and self._servers[invite].tx.state is State.PROCEEDING:
            self._events.append(CancelReceived(invite, cancel))
        self._after(tid)

    def _refuse(self, request: SipRequest, source: Destination) -> None:
        self.overload_count += 1
        if self.overload is Overload.REJECT:
            busy = make_response(request, 503, headers=(("Retry-After", str(self.retry_after)),))
            self._outbox.append(Outgoing(busy, response_destination(request, source), None))
