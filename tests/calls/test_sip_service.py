"""The SIP service on loopback: a small UDP client against the real sockets, layer and store."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.sip_metrics import SipServiceCollector
from voicegw.calls.sip_service import (
    AuthenticatedRequest,
    SipService,
    SipServiceConfig,
    mask_host,
    tenant_realm,
)
from voicegw.sip.digest import AuthorizationHeader, DigestClient, TrunkCredentials
from voicegw.sip.message import SipRequest, SipResponse, make_response, new_branch, parse_message
from voicegw.sip.security import BanList, RateLimiter
from voicegw.sip.transport import ListenAddresses
from voicegw.store import sip_accounts, tenants
from voicegw.tenant_settings import TenantSettings

Sessions = async_sessionmaker[AsyncSession]
DOMAIN = "voice.test"
REALM = tenant_realm("acme", DOMAIN)
SECRET = b"0123456789abcdef-test-secret"
REPLY_TIMEOUT = 5.0
INVITE_URI = f"sip:+15550100@{DOMAIN}"


class UdpClient(asyncio.DatagramProtocol):
    """A test UA: sends request text, collects parsed responses."""

    def __init__(self) -> None:
        self.responses: asyncio.Queue[SipResponse] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse_message(data)
        assert isinstance(message, SipResponse)
        self.responses.put_nowait(message)

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    async def send(self, text: str, server: tuple[str, int]) -> SipResponse:
        assert self.transport is not None
        self.transport.sendto(text.replace("\n", "\r\n").encode(), server)
        return await asyncio.wait_for(self.responses.get(), REPLY_TIMEOUT)

    async def silence(self, text: str, server: tuple[str, int], wait: float = 0.3) -> bool:
        """True when the server says nothing to ``text`` within ``wait`` seconds."""
        assert self.transport is not None
        self.transport.sendto(text.replace("\n", "\r\n").encode(), server)
        try:
            await asyncio.wait_for(self.responses.get(), wait)
        except TimeoutError:
            return True
        return False


@dataclass
class Ua:
    """Builds requests for one user, with a fresh branch per request and a rising CSeq."""

    client: UdpClient
    server: tuple[str, int]
    user: str = "alice"
    domain: str = REALM
    call_id: str = "reg-call-1@127.0.0.1"
    cseq: int = 0
    extra: list[str] = field(default_factory=list)

    def request(
        self, method: str, uri: str, *, to_user: str | None = None, headers: tuple[str, ...] = ()
    ) -> str:
        self.cseq += 1
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.client.port};branch={new_branch()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{self.domain}>;tag=ua-{self.user}",
            f"To: <sip:{to_user or self.user}@{self.domain}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} {method}",
            *headers,
        ]
        return "\n".join(lines) + "\n\n"

    def register(self, *, expires: int = 600, to_user: str | None = None, auth: str = "") -> str:
        contact = f"Contact: <sip:{self.user}@127.0.0.1:{self.client.port}>"
        headers = (contact, f"Expires: {expires}", *([auth] if auth else []))
        return self.request("REGISTER", f"sip:{self.domain}", to_user=to_user, headers=headers)

    def invite(self, auth: str = "") -> str:
        headers = (f"Contact: <sip:{self.user}@127.0.0.1:{self.client.port}>", "Content-Length: 0")
        return self.request("INVITE", INVITE_URI, headers=(*headers, *([auth] if auth else [])))

    async def authenticated(
        self,
        make: Callable[[str], str],
        method: str,
        uri: str,
        password: str,
        auth_user: str | None = None,
    ) -> SipResponse:
        """Send ``make("")``, answer the 401 with digest credentials, return the final answer."""
        first = await self.client.send(make(""), self.server)
        assert first.status == 401
        login = TrunkCredentials(auth_user or self.user, password, self.domain, "127.0.0.1")
        header = DigestClient(login).respond(
            401,
            first.headers.get_all("WWW-Authenticate"),
            method=method,
            uri=uri,
            target_host="127.0.0.1",
        )
        assert isinstance(header, AuthorizationHeader)
        return await self.client.send(make(f"{header.name}: {header.value}"), self.server)

    async def register_with(
        self, password: str, *, expires: int = 600, to_user: str | None = None, **kwargs: str
    ) -> SipResponse:
        def make(auth: str) -> str:
            return self.register(expires=expires, to_user=to_user, auth=auth)

        return await self.authenticated(make, "REGISTER", f"sip:{self.domain}", password, **kwargs)


@dataclass
class World:
    service: SipService
    server: tuple[str, int]
    client: UdpClient
    sessions: Sessions

    def ua(self, user: str = "alice", **kwargs: object) -> Ua:
        return Ua(self.client, self.server, user, **kwargs)  # type: ignore[arg-type]


async def start_service(
    sessions: Sessions, bans: BanList | None = None, **config: int
) -> SipService:
    settings = SipServiceConfig(
        domain=DOMAIN, nonce_secret=SECRET, listen=ListenAddresses(udp=("127.0.0.1", 0)), **config
    )
    service = SipService(settings, sessions, bans=bans)
    await service.start()
    return service


async def seed(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        for tenant_id in ("acme", "globex"):
            await tenants.create_tenant(
                session,
                actor="test",
                tenant_id=tenant_id,
                name=tenant_id,
                settings=TenantSettings(),
            )
        for user in ("alice", "bob"):
            await sip_accounts.create_credential(
                session, actor="test", tenant_id="acme", username=user, realm=REALM, password="pw"
            )


@pytest.fixture
async def world(sessions: Sessions) -> AsyncIterator[World]:
    await seed(sessions)
    service = await start_service(sessions, BanList(max_failures=3, window=60, ban_for=60))
    assert service.transports.bound.udp is not None
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(UdpClient, local_addr=("127.0.0.1", 0))
    try:
        yield World(service, service.transports.bound.udp, client, sessions)
    finally:
        transport.close()
        await service.stop()


async def test_options_is_answered_for_anybody_with_allow_and_accept(world: World) -> None:
    ua = world.ua("stranger")
    response = await world.client.send(ua.request("OPTIONS", f"sip:{DOMAIN}"), world.server)
    assert response.status == 200
    assert response.headers.get("Allow") == "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO"
    assert response.headers.get("Accept") == "application/sdp"
    assert response.headers.get("WWW-Authenticate") is None


async def test_register_without_credentials_is_challenged_sha256_first_then_md5(
    world: World,
) -> None:
    response = await world.client.send(world.ua().register(), world.server)
    assert response.status == 401
    challenges = response.headers.get_all("WWW-Authenticate")
    assert [re.search(r"algorithm=([\w-]+)", c).group(1) for c in challenges] == [  # type: ignore[union-attr]
        "SHA-256",
        "MD5",
    ]
    assert all(f'realm="{REALM}"' in c for c in challenges)


async def test_register_with_digest_binds_the_contact_under_the_credentials_tenant(
    world: World,
) -> None:
    response = await world.ua().register_with("pw")
    assert response.status == 200
    contact = f"<sip:alice@127.0.0.1:{world.client.port}>;expires=600"
    assert response.headers.values("Contact") == [contact]
    async with world.sessions() as session:
        stored = await sip_accounts.load_bindings(session, "acme", f"sip:alice@{REALM}")
        assert [b.contact for b in stored] == [f"sip:alice@127.0.0.1:{world.client.port}"]
        assert stored[0].source.port == world.client.port
        assert await sip_accounts.load_bindings(session, "globex", f"sip:alice@{REALM}") == []


async def test_unregister_removes_the_binding(world: World) -> None:
    ua = world.ua()
    assert (await ua.register_with("pw")).status == 200
    gone = await ua.register_with("pw", expires=0)
    assert gone.status == 200
    assert gone.headers.values("Contact") == []
    async with world.sessions() as session:
        assert await sip_accounts.load_bindings(session, "acme", f"sip:alice@{REALM}") == []


async def test_bindings_survive_a_restart_and_keep_their_cseq_order(
    world: World, sessions: Sessions
) -> None:
    ua = world.ua()
    assert (await ua.register_with("pw")).status == 200
    await world.service.stop()
    again = await start_service(sessions)
    try:
        assert again.transports.bound.udp is not None
        ua.server = again.transports.bound.udp
        ua.cseq -= 2  # a replayed, older REGISTER of the same Call-ID
        stale = await ua.register_with("pw")
        assert stale.status == 500
        refreshed = await ua.register_with("pw")
        assert refreshed.status == 200
        assert len(refreshed.headers.values("Contact")) == 1
    finally:
        await again.stop()


async def test_an_authenticated_user_cannot_register_someone_elses_aor(world: World) -> None:
    response = await world.ua().register_with("pw", to_user="bob")
    assert response.status == 403
    async with world.sessions() as session:
        assert await sip_accounts.load_bindings(session, "acme", f"sip:bob@{REALM}") == []


def _normalised(response: SipResponse) -> bytes:
    """The response with what is random by design (nonces, To tag, our Via branch) blanked out."""
    text = bytes(response).decode()
    text = re.sub(r'nonce="[^"]*"', 'nonce="N"', text)
    text = re.sub(r"branch=z9hG4bK[0-9a-f]+", "branch=B", text)
    return re.sub(r";tag=[0-9a-f]+\r\n", ";tag=T\r\n", text).encode()


async def test_unknown_user_and_wrong_password_get_byte_identical_rejections(
    world: World,
) -> None:
    wrong_password = await world.ua(call_id="a@ua").register_with("not-pw")
    unknown_user = await world.ua(call_id="a@ua").register_with("pw", auth_user="nobody")
    assert wrong_password.status == unknown_user.status == 401
    assert _normalised(wrong_password) == _normalised(unknown_user)


async def test_repeated_wrong_passwords_ban_the_source_and_log_it_masked(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    ua = world.ua()
    with caplog.at_level(logging.WARNING, logger="voicegw.calls.sip"):
        for _ in range(3):
            assert (await ua.register_with("guess")).status == 401
    bans = [r for r in caplog.records if r.getMessage() == "sip.security.ban"]
    assert len(bans) == 1
    assert bans[0].__dict__["source"] == "127.0.0.x"
    assert bans[0].__dict__["failures"] == 3
    assert await world.client.silence(ua.request("OPTIONS", f"sip:{DOMAIN}"), world.server)


async def test_a_source_over_its_rate_is_logged_once_as_a_masked_security_event(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.service.screen.rate = RateLimiter(rate=0.1, burst=2.0)
    ua = world.ua("stranger")
    with caplog.at_level(logging.WARNING, logger="voicegw.calls.sip"):
        for _ in range(2):
            assert (
                await world.client.send(ua.request("OPTIONS", f"sip:{DOMAIN}"), world.server)
            ).status == 200
        for _ in range(5):
            assert await world.client.silence(
                ua.request("OPTIONS", f"sip:{DOMAIN}"), world.server, 0.05
            )
    throttled = [r for r in caplog.records if r.getMessage() == "sip.security.rate_limited"]
    assert [
        (r.__dict__["source"], r.__dict__["transport"], r.__dict__["dropped"]) for r in throttled
    ] == [("127.0.0.x", "UDP", 1)]
    assert world.service.screen.counters.dropped_by_transport == {"UDP": 5}


async def test_the_defences_are_exported_to_prometheus_without_source_addresses(
    world: World,
) -> None:
    registry = CollectorRegistry()
    SipServiceCollector(world.service).register(registry)
    world.service.screen.rate = RateLimiter(rate=0.1, burst=4.0)
    ua = world.ua()
    for _ in range(2):
        assert (await ua.register_with("guess")).status == 401  # two requests each
    for _ in range(3):
        options = ua.request("OPTIONS", f"sip:{DOMAIN}")
        assert await world.client.silence(options, world.server, 0.05)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("voicegw_sip_inbound_messages_total") == 7
    assert value("voicegw_sip_dropped_messages_total", reason="rate_limited") == 3
    assert value("voicegw_sip_dropped_by_transport_total", transport="UDP") == 3
    assert value("voicegw_sip_failure_tracked_sources") == 1
    assert value("voicegw_sip_banned_sources") == 0
    assert value("voicegw_sip_pending_requests") == 0
    assert value("voicegw_sip_pending_requests_peak") == 1
    assert value("voicegw_sip_pending_refused_total") == 0
    assert "127.0.0.1" not in generate_latest(registry).decode()


async def test_a_missing_challenge_answer_is_not_a_failure(world: World) -> None:
    ua = world.ua()
    for _ in range(5):
        assert (await world.client.send(ua.register(), world.server)).status == 401
    assert list(world.service.security_events) == []
    assert (await ua.register_with("pw")).status == 200


async def test_unauthenticated_invite_is_challenged(world: World) -> None:
    response = await world.client.send(world.ua().invite(), world.server)
    assert response.status == 401
    assert len(response.headers.get_all("WWW-Authenticate")) == 2


async def test_authenticated_invite_is_not_yet_routed_by_default(world: World) -> None:
    ua = world.ua()
    response = await ua.authenticated(lambda auth: ua.invite(auth), "INVITE", INVITE_URI, "pw")
    assert (response.status, response.reason) == (480, "Not Yet Routed")


async def test_on_invite_hears_the_tenant_of_the_credentials(world: World) -> None:
    heard: list[AuthenticatedRequest] = []

    async def route(service: SipService, invite: AuthenticatedRequest) -> None:
        heard.append(invite)
        service.respond(invite.transaction, make_response(invite.request, 486))

    world.service.on_invite = route
    ua = world.ua()
    response = await ua.authenticated(lambda auth: ua.invite(auth), "INVITE", INVITE_URI, "pw")
    assert response.status == 486
    assert [(h.tenant_id, h.username, h.realm, h.algorithm) for h in heard] == [
        ("acme", "alice", REALM, "SHA-256")
    ]


async def test_methods_we_do_not_implement_are_refused_without_a_challenge(world: World) -> None:
    ua = world.ua()
    message = await world.client.send(ua.request("MESSAGE", f"sip:bob@{REALM}"), world.server)
    assert message.status == 405
    assert message.headers.get("Allow") is not None
    unknown = await world.client.send(ua.request("FROBNICATE", f"sip:bob@{REALM}"), world.server)
    assert unknown.status == 501


async def test_realm_comes_from_the_request_text_and_falls_back_to_the_domain(
    world: World,
) -> None:
    def realm(method: str, uri: str, domain: str) -> str:
        text = world.ua(domain=domain).request(method, uri).replace("\n", "\r\n")
        request = parse_message(text.encode())
        assert isinstance(request, SipRequest)
        return world.service.realm_for(request)

    assert realm("REGISTER", f"sip:{REALM}", REALM) == REALM
    assert realm("REGISTER", "sip:ACME.voice.test", REALM) == REALM
    assert realm("INVITE", INVITE_URI, "globex.voice.test") == "globex.voice.test"
    for elsewhere in ("evil.example", "a.b.voice.test", "voice.test", "x.voice.test.evil"):
        assert realm("REGISTER", f"sip:{elsewhere}", elsewhere) == DOMAIN
    assert tenant_realm("acme", "Voice.Test") == "acme.voice.test"


def test_logged_addresses_are_masked() -> None:
    assert mask_host("203.0.113.77") == "203.0.113.x"
    assert mask_host("2001:db8:1:2::5") == "2001:db8:1::/48"


# --- overload: pending slots shared per source, and no lookup where none is needed ---------


async def udp_client_at(host: str) -> tuple[asyncio.DatagramTransport, UdpClient]:
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(UdpClient, local_addr=(host, 0))


async def until(condition: Callable[[], bool], seconds: float = REPLY_TIMEOUT) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


class HeldInvites:
    """A slow call layer: each authenticated INVITE waits until ``release`` is set."""

    def __init__(self) -> None:
        self.held: list[AuthenticatedRequest] = []
        self.release = asyncio.Event()

    async def __call__(self, service: SipService, invite: AuthenticatedRequest) -> None:
        self.held.append(invite)
        await self.release.wait()
        service.respond(invite.transaction, make_response(invite.request, 480))


class Caller:
    """Authenticated INVITEs from one UA, all answering one challenge (rising nc)."""

    def __init__(self, ua: Ua, challenge: SipResponse) -> None:
        self.ua = ua
        credentials = TrunkCredentials(ua.user, "pw", ua.domain, "127.0.0.1")
        self.digest = DigestClient(credentials)
        self.challenges = challenge.headers.get_all("WWW-Authenticate")
        self.count = 0

    @classmethod
    async def challenged(cls, ua: Ua) -> Caller:
        # A REGISTER's 401 carries a nonce for this source; its answer is never retransmitted.
        challenge = await ua.client.send(ua.register(), ua.server)
        assert challenge.status == 401
        return cls(ua, challenge)

    def invite(self) -> bytes:
        self.count += 1
        self.ua.call_id = f"held-{self.count}-{self.ua.client.port}@ua"
        header = self.digest.respond(
            401, self.challenges, method="INVITE", uri=INVITE_URI, target_host="127.0.0.1"
        )
        assert isinstance(header, AuthorizationHeader)
        text = self.ua.invite(f"{header.name}: {header.value}")
        return text.replace("\n", "\r\n").encode()

    def send(self, data: bytes) -> None:
        assert self.ua.client.transport is not None
        self.ua.client.transport.sendto(data, self.ua.server)


async def next_status(client: UdpClient, status: int) -> SipResponse:
    async with asyncio.timeout(REPLY_TIMEOUT):
        while (response := await client.responses.get()).status != status:
            pass
    return response


async def test_a_busy_source_cannot_take_the_pending_slots_another_source_needs(
    sessions: Sessions,
) -> None:
    await seed(sessions)
    service = await start_service(sessions, max_pending=6, max_pending_per_source=3)
    slow = HeldInvites()
    service.on_invite = slow
    assert service.transports.bound.udp is not None
    server = service.transports.bound.udp
    transport_a, client_a = await udp_client_at("127.0.0.1")
    transport_b, client_b = await udp_client_at("127.0.0.2")
    try:
        a = await Caller.challenged(Ua(client_a, server))
        first = a.invite()
        for data in (first, a.invite(), a.invite()):
            a.send(data)
        await until(lambda: len(slow.held) == 3)
        a.send(a.invite())  # over its share: refused at once, nothing looked up
        refused = await next_status(client_a, 503)
        assert refused.headers.get("Retry-After") == "5"
        # Retransmissions belong to their transaction: they take no slot and get no 503.
        for _ in range(3):
            a.send(first)
        await asyncio.sleep(0.3)
        assert service.pending.held_by("127.0.0.1") == 3 and service.pending.refused == 1

        # Another source still gets through, though the global cap (6) is not yet reached
        # only because 127.0.0.1 was held to its share.
        b = await Caller.challenged(Ua(client_b, server, user="bob"))
        b.send(b.invite())
        await until(lambda: len(slow.held) == 4)
        assert [invite.username for invite in slow.held] == ["alice"] * 3 + ["bob"]
        assert (len(service.pending), service.pending.sources) == (4, 2)

        slow.release.set()
        await next_status(client_b, 480)
        await until(lambda: len(service.pending) == 0 and service.pending.sources == 0)
    finally:
        transport_a.close()
        transport_b.close()
        await service.stop()


async def test_a_source_that_proved_itself_gets_a_reserved_slot_when_the_others_are_full(
    sessions: Sessions,
) -> None:
    await seed(sessions)
    service = await start_service(
        sessions, max_pending=4, max_pending_per_source=2, pending_reserve=2
    )
    slow = HeldInvites()
    service.on_invite = slow
    assert service.transports.bound.udp is not None
    server = service.transports.bound.udp
    endpoints = [await udp_client_at(f"127.0.0.{i}") for i in (1, 2, 3, 4)]
    phone, busy_a, busy_b, stranger = (Ua(client, server) for _, client in endpoints)
    try:
        assert (await phone.register_with("pw")).status == 200  # 127.0.0.1 proves itself
        # Two other sources take all four shared slots (the most each may hold).
        for ua in (busy_a, busy_b):
            caller = await Caller.challenged(ua)
            caller.send(caller.invite())
            caller.send(caller.invite())
        await until(lambda: len(slow.held) == 4)
        # A source that never proved itself finds no slot for its credential lookup ...
        assert (await stranger.register_with("pw")).status == 503
        # ... the phone that registered still places its call, from the reserve.
        caller = await Caller.challenged(phone)
        caller.send(caller.invite())
        await until(lambda: len(slow.held) == 5)
        assert service.pending.held_by("127.0.0.1") == 1 and len(service.pending) == 5
        slow.release.set()
        await until(lambda: len(service.pending) == 0)
    finally:
        for transport, _ in endpoints:
            transport.close()
        await service.stop()


class CountingSessions:
    """The real session factory, counting the sessions the service opens."""

    def __init__(self, inner: Sessions) -> None:
        self.inner = inner
        self.opened = 0

    def __call__(self) -> AsyncSession:
        self.opened += 1
        return self.inner()

    def begin(self) -> object:
        self.opened += 1
        return self.inner.begin()


FORGED = (
    'Authorization: Digest username="alice", realm="acme.voice.test", nonce="00", '
    'uri="sip:acme.voice.test", response="00000000000000000000000000000000", qop=auth, '
    'nc=00000001, cnonce="c0ffee", algorithm=MD5'
)


async def test_requests_refused_on_their_text_alone_never_reach_the_database(
    sessions: Sessions,
) -> None:
    await seed(sessions)
    counting = CountingSessions(sessions)
    service = await start_service(cast(Sessions, counting))
    assert service.transports.bound.udp is not None
    server = service.transports.bound.udp
    transport, client = await udp_client_at("127.0.0.1")
    # The INVITE's 401 is retransmitted until an ACK: it gets a client of its own.
    invite_transport, invite_client = await udp_client_at("127.0.0.1")
    try:
        ua = Ua(client, server)
        refused_on_sight = [
            (client, ua.register()),  # no credentials
            (client, ua.request("BYE", f"sip:bob@{REALM}")),
            (client, ua.register(auth=FORGED)),  # a nonce we never issued
            (client, ua.register(auth="Authorization: Digest username=alice")),  # malformed
            # No call layer attached, so nobody takes unauthenticated calls.
            (invite_client, Ua(invite_client, server).invite()),
        ]
        for sender, text in refused_on_sight:
            response = await sender.send(text, server)
            assert response.status == 401
            assert len(response.headers.get_all("WWW-Authenticate")) == 2
        assert counting.opened == 0
        assert len(service.pending) == 0 and service.pending.refused == 0

        # An answer to a real challenge costs the one lookup, known user or not.
        assert (await ua.register_with("wrong")).status == 401
        assert counting.opened == 1
        assert (await ua.register_with("pw", auth_user="nobody")).status == 401
        assert counting.opened == 2
    finally:
        transport.close()
        invite_transport.close()
        await service.stop()
