"""The node's SIP service: sockets, screening, transactions, digest auth and the registrar.

Wiring, outermost first::

    SipTransports (UDP/TCP/TLS) -> InboundScreen (bans, rate, parse, Via)
        -> TransactionLayer (retransmissions, timers, CANCEL)
        -> this module (who may do what) -> registrar + store / on_invite hook

The sans-IO layer keeps one deadline; a single loop timer is re-armed to it
after every input. Time: the transaction layer and the ban list run on the
monotonic clock, digest nonces and bindings on wall time (nonces are checked
by any node sharing the secret, bindings outlive the process).

Who may do what (one table, :data:`METHOD_RULES`):

* OPTIONS is answered 200 for anybody. Carriers and proxies send it as a
  keep-alive and never answer a challenge; it creates no state and reveals
  only what Allow/Accept say. The rate limiter still applies.
* REGISTER, INVITE and BYE need digest credentials (401 with SHA-256 and MD5
  challenges). We are the UAS for all of them, hence 401/WWW-Authenticate
  rather than a proxy's 407.
* Methods we do not implement are refused (405 with Allow, or 501) without a
  challenge: asking for credentials first would only add a round trip.

The realm of a request is derived from its text only (Request-URI host for
REGISTER, From host otherwise): ``<tenant>.<domain>`` when it has that shape,
else the bare domain, where no credential exists. No lookup happens before
the challenge, so a challenge says nothing about which tenants or users exist.
The tenant a request acts for is the tenant of the credential that verified,
never anything the request claims. An unknown user and a wrong password go
through the same lookup and :meth:`DigestAuthenticator.verify` path and get
byte-identical 401s.

Overload (a flood that passed the edge's rate limits): a request whose answer
follows from its text and our nonce alone (no credentials, malformed ones, a
nonce we did not issue to that address) is challenged at once, without a task
or a lookup. Only a request that needs a lookup or the call layer takes a slot
of :class:`~voicegw.sip.security.PendingShares`: at most
``max_pending_per_source`` per source, ``max_pending`` in all, plus a reserve
for sources that authenticated recently (registered phones, trunks). Beyond
that, 503 with Retry-After. The lookups themselves pass a
:class:`~voicegw.calls.fair_gate.FairGate`: a few at a time, trusted sources
first, the rest source by source. Retransmissions are absorbed by the transaction
layer and never take a second slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.fair_gate import FairGate
from voicegw.calls.trunks import TrunkTable
from voicegw.sip.digest import (
    Accepted,
    DigestAuthenticator,
    DigestError,
    Rejection,
    parse_credentials,
)
from voicegw.sip.edge import InboundScreen, SourceThrottled
from voicegw.sip.headers import unsupported_options
from voicegw.sip.merged import MergedRequests
from voicegw.sip.message import SipMessage, SipRequest, SipResponse, make_response
from voicegw.sip.registrar import (
    DEFAULT_POLICY,
    RegistrarPolicy,
    address_of_record,
    process_register,
)
from voicegw.sip.security import (
    BanList,
    PendingShares,
    ProvenSources,
    RateLimiter,
    SecurityEvent,
    source_key,
)
from voicegw.sip.transaction import Destination, State
from voicegw.sip.transaction_layer import (
    CancelReceived,
    Outgoing,
    RequestReceived,
    ResponseReceived,
    TransactionId,
    TransactionLayer,
    TransactionTimedOut,
    TransportFailed,
)
from voicegw.sip.transport import ListenAddresses, SipTransports
from voicegw.sip.uri import SipURI
from voicegw.store import sip_accounts
from voicegw.store.tenants import TENANT_ID

log = logging.getLogger("voicegw.calls.sip")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO"
ACCEPT = "application/sdp"
#: Server transaction states in which a merged copy of the request is refused (482).
_OPEN_STATES: Final = frozenset({State.TRYING, State.PROCEEDING, State.ACCEPTED})
#: Option tags an INVITE may Require of us (RFC 4028 session timers); others get 420.
INVITE_EXTENSIONS = frozenset({"timer"})
MAX_REALMS = 1024


def tenant_realm(tenant_id: str, domain: str) -> str:
    """The digest realm (and SIP domain of the AORs) of a tenant: ``<tenant>.<domain>``."""
    return f"{tenant_id}.{domain}".lower()


@dataclass(frozen=True, slots=True)
class SipServiceConfig:
    #: The operator's SIP domain; tenant realms are ``<tenant>.<domain>``.
    domain: str
    #: Keys digest nonces; nodes sharing it accept each other's nonces (>= 16 bytes).
    nonce_secret: bytes = field(repr=False)
    listen: ListenAddresses = field(
        default_factory=lambda: ListenAddresses(udp=("127.0.0.1", 5060))
    )
    registrar: RegistrarPolicy = DEFAULT_POLICY
    #: Offered in this order (RFC 8760: strongest first). Some deployed UAs give
    #: up on the whole 401 when any challenge names an algorithm they lack
    #: (baresip 1.0 / libre answers "Function not implemented" to SHA-256):
    #: fleets of those need ("MD5",). Operator-wide, so a challenge never
    #: depends on who asks.
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    #: Requests being authenticated or handled at once (those that need a lookup); beyond it, 503.
    max_pending: int = 256
    #: The most of those one source may hold, so a few flooding sources cannot take every
    #: slot from the others (a registered phone placing a call). Retransmissions are absorbed
    #: by the transaction layer and never take a second slot.
    max_pending_per_source: int = 16
    #: Slots beyond ``max_pending`` that only sources whose credentials verified within
    #: ``proven_for`` seconds (or allow-listed trunks) may take: a flood from many sources
    #: can fill the shared slots, not these.
    pending_reserve: int = 64
    proven_for: float = 3600.0
    #: Lookups (credentials, the call layer's routing of unauthenticated INVITEs) run at
    #: once; the rest wait their turn, trusted sources first, then source by source.
    lookup_concurrency: int = 8
    retry_after: int = 5


@dataclass(frozen=True, slots=True)
class AuthenticatedRequest:
    """A request whose digest credentials verified, with the identity they prove."""

    transaction: TransactionId
    request: SipRequest
    source: Destination
    tenant_id: str
    username: str
    realm: str
    #: The digest algorithm the client chose (``SHA-256`` or ``MD5``).
    algorithm: str
    #: The configured trunk this request is from (its credential verified, or, with
    #: ``realm`` and ``algorithm`` empty, its source is on the trunk's allow-list).
    trunk: str | None = None


#: The call layer's entry point for an authenticated INVITE. It answers
#: through :meth:`SipService.respond` (provisional and final responses).
InviteHandler = Callable[["SipService", AuthenticatedRequest], Awaitable[None]]


class DialogRequests(Protocol):
    """The call layer's side of requests that belong to calls (see :mod:`voicegw.calls.sip_calls`).

    In-dialog requests are not challenged: a trunk cannot answer a challenge,
    and the dialog's tags (ours random) already bind the request to a call
    that was authorised when it was set up.
    """

    def in_dialog(
        self, transaction: TransactionId | None, request: SipRequest, source: Destination
    ) -> bool:
        """Take a request with a To tag (or an ACK for a 2xx); False if no call knows it."""
        ...

    def cancelled(self, transaction: TransactionId) -> None:
        """The INVITE ``transaction`` was cancelled (487 already sent if it was unanswered)."""
        ...

    def client_event(self, event: ResponseReceived | TransactionTimedOut | TransportFailed) -> None:
        """What became of a request the call layer sent (BYE, ...)."""
        ...

    async def open_invite(
        self, transaction: TransactionId, request: SipRequest, source: Destination
    ) -> bool:
        """An INVITE without credentials: True if its target takes unauthenticated calls
        (a tenant's own number) and the call layer handles it; False to challenge it."""
        ...


async def not_yet_routed(service: SipService, invite: AuthenticatedRequest) -> None:
    """Default INVITE handler until the call layer takes over: 480, nothing is set up."""
    service.respond(invite.transaction, make_response(invite.request, 480, "Not Yet Routed"))


class Rule(enum.Enum):
    """What the service does with a new request of a method."""

    ANSWER_OPTIONS = "options"
    AUTH_REGISTER = "register"
    AUTH_INVITE = "invite"
    AUTH_NO_DIALOG = "no-dialog"  # authenticated, then 481: dialogs are the call layer's
    NOT_ALLOWED = "405"
    NOT_IMPLEMENTED = "501"


METHOD_RULES: dict[str, Rule] = {
    "OPTIONS": Rule.ANSWER_OPTIONS,
    "REGISTER": Rule.AUTH_REGISTER,
    "INVITE": Rule.AUTH_INVITE,
    "BYE": Rule.AUTH_NO_DIALOG,
    **{
        method: Rule.NOT_ALLOWED
        for method in (
            "SUBSCRIBE",
            "NOTIFY",
            "MESSAGE",
            "INFO",
            "UPDATE",
            "PRACK",
            "REFER",
            "PUBLISH",
        )
    },
}


def mask_host(host: str) -> str:
    """An address for logs: IPv4 without its last octet, IPv6 only its /48."""
    try:
        address = ipaddress.ip_address(host.split("/")[0].strip("[]"))
    except ValueError:
        return "invalid"
    if isinstance(address, ipaddress.IPv4Address):
        return ".".join(str(address).split(".")[:3]) + ".x"
    return str(ipaddress.IPv6Network((address, 48), strict=False))


class SipService:
    """One node's SIP endpoint: answers OPTIONS, registers users, authenticates INVITEs."""

    def __init__(
        self,
        config: SipServiceConfig,
        sessions: async_sessionmaker[AsyncSession],
        *,
        bans: BanList | None = None,
        rate: RateLimiter | None = None,
        layer: TransactionLayer | None = None,
        wall_clock: Callable[[], float] = time.time,
        on_invite: InviteHandler = not_yet_routed,
        on_security_event: Callable[[SecurityEvent], None] | None = None,
        tls_context: ssl.SSLContext | None = None,
        trunks: TrunkTable | None = None,
        client_tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        #: Configured trunks: an allow-listed source's INVITEs are its trunk's, unchallenged.
        self.trunks = trunks or TrunkTable()
        self.sessions = sessions
        self.bans = bans or BanList()
        self.layer = layer or TransactionLayer()
        #: Out-of-dialog requests seen, to refuse a copy arriving by another path (482).
        self.merged = MergedRequests()
        self.wall_clock = wall_clock
        self.on_invite = on_invite
        #: The call layer, once attached: in-dialog requests, CANCEL, our requests' fate.
        self.dialogs: DialogRequests | None = None
        #: Told of every ban (metrics, alerting); it runs on the event loop: keep it quick.
        self.on_security_event = on_security_event
        self.screen = InboundScreen(
            self.bans,
            rate or RateLimiter(rate=50.0, burst=100.0),
            on_throttled=_log_throttled,
        )
        self.transports = SipTransports(
            self.screen, self._on_message, tls_context, client_tls_context=client_tls_context
        )
        self.security_events: deque[SecurityEvent] = deque(maxlen=100)  # the latest bans
        self._authenticators: OrderedDict[str, DigestAuthenticator] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Who holds the slots of requests being worked on (see ``max_pending_per_source``).
        self.pending = PendingShares(
            config.max_pending, config.max_pending_per_source, config.pending_reserve
        )
        self.proven = ProvenSources(config.proven_for)
        self.gate = FairGate(config.lookup_concurrency)
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # Registrar read-modify-write is serialised per node (REGISTERs are light).
        self._register_lock = asyncio.Lock()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> ListenAddresses:
        self._sender = asyncio.create_task(self._send_loop(), name="sip-sender")
        return await self.transports.start(self.config.listen)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in [*self._tasks, *([self._sender] if self._sender else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)
        await self.transports.close()

    # --- the call layer's surface ---------------------------------------------------------

    def respond(self, transaction: TransactionId, response: SipResponse) -> bool:
        """Send a response in a server transaction; False if its state forbids it."""
        sent = self.layer.send_response(transaction, response, self._mono())
        self._pump()
        return sent

    def send_request(self, request: SipRequest, destination: Destination) -> TransactionId:
        """Start a client transaction (an in-dialog BYE, INFO ...); its fate goes to ``dialogs``."""
        tid = self.layer.send_request(request, destination, self._mono())
        self._pump()
        return tid

    def cancel(self, transaction: TransactionId) -> bool:
        """§9.1: CANCEL our pending INVITE ``transaction``; False if nothing is left to cancel."""
        cancelled = self.layer.cancel(transaction, self._mono())
        self._pump()
        return cancelled

    def send_stateless(self, message: SipRequest | SipResponse, destination: Destination) -> None:
        """Send outside any transaction: a dialog's 2xx retransmission or ACK."""
        self.layer.send_stateless(message, destination)
        self._pump()

    def realm_for(self, request: SipRequest) -> str:
        """The realm to challenge ``request`` in, from its text alone (see the module doc)."""
        uri = request.uri if request.method == "REGISTER" else request.from_.uri
        host = uri.host.lower() if isinstance(uri, SipURI) else ""
        label, dot, rest = host.partition(".")
        if dot and rest == self.config.domain.lower() and TENANT_ID.match(label):
            return host
        return self.config.domain.lower()

    # --- bytes and time in, bytes out ------------------------------------------------------

    def _mono(self) -> float:
        return asyncio.get_running_loop().time()

    def _on_message(self, message: SipMessage, source: Destination) -> None:
        if isinstance(message, SipRequest):
            self.layer.receive_request(message, source, self._mono())
        else:
            self.layer.receive_response(message, source, self._mono())
        self._pump()

    def _pump(self) -> None:
        # Events first: answering one (OPTIONS, 405 ...) queues a message sent just below.
        while (event := self.layer.next_event()) is not None:
            if isinstance(event, RequestReceived) and event.transaction is not None:
                self._dispatch(event.transaction, event.request, event.source)
            elif isinstance(event, RequestReceived) and self.dialogs is not None:
                self.dialogs.in_dialog(None, event.request, event.source)  # ACK for a 2xx
            elif isinstance(event, CancelReceived):
                # The INVITE handler owns the call; if it has not answered yet, 487 ends it.
                self.layer.send_response(
                    event.transaction, make_response(event.cancel, 487), self._mono()
                )
                if self.dialogs is not None:
                    self.dialogs.cancelled(event.transaction)
            elif (
                isinstance(event, ResponseReceived | TransactionTimedOut | TransportFailed)
                and self.dialogs is not None
            ):
                self.dialogs.client_event(event)
        for out in self.layer.messages_to_send():
            self._outbox.put_nowait(out)
        self._rearm()

    def _rearm(self) -> None:
        at = self.layer.get_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = None if at is None else asyncio.get_running_loop().call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, None
        self.layer.handle_timer(self._mono())
        self._pump()

    async def _send_loop(self) -> None:
        # One sender keeps the order of what the layer queued, per destination too.
        while True:
            out = await self._outbox.get()
            try:
                await self.transports.send(bytes(out.message), out.destination)
            except OSError as error:
                log.info("sip.send_failed", extra={"error": type(error).__name__})
                if out.transaction is not None:
                    self.layer.transport_error(out.transaction, self._mono())
                    self._pump()

    # --- dispatch -------------------------------------------------------------------------

    def _dispatch(self, tid: TransactionId, request: SipRequest, source: Destination) -> None:
        if (
            self.dialogs is not None
            and request.to.tag is not None
            and self.dialogs.in_dialog(tid, request, source)
        ):
            return
        if self.merged.is_merged(tid, request, self._still_open):
            self._answer(tid, make_response(request, 482))
            return
        rule = METHOD_RULES.get(request.method, Rule.NOT_IMPLEMENTED)
        if rule is Rule.ANSWER_OPTIONS:
            headers = (("Allow", ALLOW), ("Accept", ACCEPT))
            self._answer(tid, make_response(request, 200, headers=headers))
        elif rule is Rule.NOT_ALLOWED:
            self._answer(tid, make_response(request, 405, headers=(("Allow", ALLOW),)))
        elif rule is Rule.NOT_IMPLEMENTED:
            self._answer(tid, make_response(request, 501))
        elif (rejection := self._rejected_without_lookup(rule, request, source)) is not None:
            # Decided from the request text and our nonce alone: no task, no database, so a
            # flood of credential-less or forged requests costs a hash each, not a slot.
            self._answer(tid, _challenge(request, rejection))
        elif not self.pending.acquire(source.host, trusted=self._trusted(source)):
            retry = (("Retry-After", str(self.config.retry_after)),)
            self._answer(tid, make_response(request, 503, headers=retry))
        else:
            self._spawn(self._authenticated(rule, tid, request, source), tid, request, source)

    def _still_open(self, transaction: TransactionId) -> bool:
        # Being answered, or answered 2xx (RFC 6026 Accepted): a copy now would be a second
        # call. After a non-2xx final it is over for this purpose, which also spares
        # phones that (against §22.2) resend a challenged request with the same CSeq.
        return self.layer.state_of(transaction) in _OPEN_STATES

    def _turn(self, source: Destination) -> contextlib.AbstractAsyncContextManager[None]:
        return self.gate.turn(source.host, trusted=self._trusted(source))

    def _trusted(self, source: Destination) -> bool:
        return (
            self.proven.is_proven(source.host, self._mono())
            or self.trunks.by_source(source.host) is not None
        )

    def _answer(self, tid: TransactionId, response: SipResponse) -> None:
        # Called while pumping: the outer _pump collects what this queues.
        self.layer.send_response(tid, response, self._mono())

    def _spawn(
        self,
        work: Coroutine[Any, Any, None],
        tid: TransactionId,
        request: SipRequest,
        source: Destination,
    ) -> None:
        # The caller took a slot in ``pending`` for ``source``; the task gives it back.
        task = asyncio.create_task(self._guarded(work, tid, request))
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            self.pending.release(source.host)

        task.add_done_callback(done)

    async def _guarded(
        self, work: Coroutine[Any, Any, None], tid: TransactionId, request: SipRequest
    ) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # Type only: the message may quote request bytes. The request still gets an answer.
            log.error("sip.handler_failed", extra={"error": type(error).__name__})
            self.respond(tid, make_response(request, 500))

    async def _authenticated(
        self, rule: Rule, tid: TransactionId, request: SipRequest, source: Destination
    ) -> None:
        trunk = (
            self.trunks.by_source(source.host)
            if rule is Rule.AUTH_INVITE and not request.headers.get_all("Authorization")
            else None
        )
        if trunk is not None:
            # The tenant is the trunk's, from config; nothing in the request can change it.
            log.info("sip.trunk.invite", extra={"trunk": trunk.trunk, "tenant_id": trunk.tenant_id})
            invite = AuthenticatedRequest(
                tid, request, source, trunk.tenant_id, trunk.trunk, "", "", trunk=trunk.trunk
            )
            await self._invite(invite)
            return
        if (
            rule is Rule.AUTH_INVITE
            and self.dialogs is not None
            and not request.headers.get_all("Authorization")
        ):
            async with self._turn(source):
                taken = await self.dialogs.open_invite(tid, request, source)
            if taken:
                return
        who = await self._authenticate(tid, request, source)
        if isinstance(who, Rejection):
            self.respond(tid, _challenge(request, who))
            return
        if rule is Rule.AUTH_REGISTER:
            await self._register(who)
        elif rule is Rule.AUTH_INVITE:
            await self._invite(who)
        else:
            self.respond(tid, make_response(request, 481))

    async def _invite(self, invite: AuthenticatedRequest) -> None:
        """A new call from an authenticated caller, unless it requires what we lack."""
        unsupported = unsupported_options(invite.request.headers, INVITE_EXTENSIONS)
        if unsupported:
            # RFC 3261 §8.2.2.3; a carrier that asked for 100rel (PRACK) retries without it.
            headers = (("Unsupported", ", ".join(unsupported)),)
            self.respond(invite.transaction, make_response(invite.request, 420, headers=headers))
            return
        await self.on_invite(self, invite)

    # --- authentication -------------------------------------------------------------------

    def _authenticator(self, realm: str) -> DigestAuthenticator:
        found = self._authenticators.get(realm)
        if found is None:
            # Bounded: realms come from request text; a forgotten one only costs a stale nonce.
            if len(self._authenticators) >= MAX_REALMS:
                self._authenticators.popitem(last=False)
            found = DigestAuthenticator(
                realm, self.config.nonce_secret, algorithms=self.config.digest_algorithms
            )
            self._authenticators[realm] = found
        else:
            self._authenticators.move_to_end(realm)
        return found

    def _rejected_without_lookup(
        self, rule: Rule, request: SipRequest, source: Destination
    ) -> Rejection | None:
        """The 401 for ``request`` when it needs no lookup to decide; None when it does.

        :meth:`DigestAuthenticator.verify` checks everything that does not depend on the
        user (credentials for our realm at all, their form, our nonce for this source)
        before it asks for the user's HA1. A rejection reached before that question says
        nothing about which users exist, so it may come at once, while a request that
        gets as far as the question pays for the lookup whether the user exists or not.
        """
        if (
            rule is Rule.AUTH_INVITE
            and not request.headers.get_all("Authorization")
            and (self.trunks.by_source(source.host) is not None or self.dialogs is not None)
        ):
            return None  # a trunk's call, or the call layer may take it unauthenticated

        def needs_lookup(user: str, algorithm_name: str) -> str | None:
            raise _LookupNeeded

        try:
            verdict = self._verify(request, source, needs_lookup)
        except _LookupNeeded:
            return None
        assert isinstance(verdict, Rejection)  # nothing verifies without a stored HA1
        if verdict.counts_as_failure:
            self._record_failure(source)
        return verdict

    def _verify(
        self,
        request: SipRequest,
        source: Destination,
        lookup: Callable[[str, str], str | None],
    ) -> Accepted | Rejection:
        return self._authenticator(self.realm_for(request)).verify(
            request.headers.get_all("Authorization"),
            method=request.method,
            now=self.wall_clock(),
            lookup=lookup,
            client_key=source_key(source.host),
        )

    async def _authenticate(
        self, tid: TransactionId, request: SipRequest, source: Destination
    ) -> AuthenticatedRequest | Rejection:
        realm = self.realm_for(request)
        values = request.headers.get_all("Authorization")
        username = _username_for(values, realm)
        # Known or not, every claimed username costs the same lookup and verify.
        record = None
        if username is not None:
            async with self._turn(source), self.sessions() as session:
                record = await sip_accounts.find_credential(session, realm, username)

        def lookup(user: str, algorithm_name: str) -> str | None:
            if record is None or user != record.username:
                return None
            return record.ha1_for(algorithm_name)

        verdict = self._verify(request, source, lookup)
        if isinstance(verdict, Accepted) and record is not None:
            self.bans.record_success(source.host)
            self.proven.record(source.host, self._mono())
            trunk = self.trunks.by_credential(record.tenant_id, record.username)
            return AuthenticatedRequest(
                tid,
                request,
                source,
                record.tenant_id,
                record.username,
                realm,
                verdict.algorithm,
                trunk=None if trunk is None else trunk.trunk,
            )
        assert isinstance(verdict, Rejection)
        if verdict.counts_as_failure:
            self._record_failure(source)
        return verdict

    def _record_failure(self, source: Destination) -> None:
        now = time.monotonic()
        event = self.bans.record_failure(source.host, now)
        if event is None:
            return
        self.security_events.append(event)
        if self.on_security_event is not None:
            self.on_security_event(event)
        log.warning(
            "sip.security.ban",
            extra={
                "source": mask_host(event.source),
                "reason": event.reason.value,
                "failures": event.failures,
                "ban_seconds": round(event.until - now),
            },
        )

    # --- registrar ------------------------------------------------------------------------

    async def _register(self, who: AuthenticatedRequest) -> None:
        aor = address_of_record(who.request.to.uri)
        async with self._register_lock, self.sessions.begin() as session:
            current = (
                [] if aor is None else await sip_accounts.load_bindings(session, who.tenant_id, aor)
            )
            result = process_register(
                who.request,
                username=who.username,
                domain=who.realm,
                current=current,
                source=who.source,
                now=self.wall_clock(),
                policy=self.config.registrar,
            )
            await sip_accounts.apply_binding_changes(
                session, who.tenant_id, result.saved, result.removed
            )
        log.info(
            "sip.register",
            extra={
                "tenant_id": who.tenant_id,
                "algorithm": who.algorithm,
                "status": result.response.status,
                "refusal": None if result.refusal is None else result.refusal.name,
                "bindings": len(result.bindings),
            },
        )
        self.respond(who.transaction, result.response)


def _log_throttled(event: SourceThrottled) -> None:
    # At most once per source per report interval (the screen tallies between reports).
    log.warning(
        "sip.security.rate_limited",
        extra={
            "source": mask_host(event.source),
            "transport": event.transport,
            "dropped": event.dropped,
        },
    )


class _LookupNeeded(Exception):
    """Raised by the probe lookup of :meth:`SipService._rejected_without_lookup`."""


def _challenge(request: SipRequest, rejection: Rejection) -> SipResponse:
    challenges = tuple(("WWW-Authenticate", value) for value in rejection.challenges)
    return make_response(request, 401, headers=challenges)


def _username_for(values: list[str], realm: str) -> str | None:
    """The username of the first credentials for ``realm`` (the ones verify will check)."""
    for value in values:
        try:
            credentials = parse_credentials(value)
        except DigestError:
            return None  # verify rejects the whole set as malformed
        if credentials.realm == realm:
            return credentials.username
    return None
