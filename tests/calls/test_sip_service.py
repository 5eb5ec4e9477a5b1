"""The SIP service on loopback: a small UDP client against the real sockets, layer and store."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.calls.sip_service import (
    AuthenticatedRequest,
    SipService,
    SipServiceConfig,
    mask_host,
    tenant_realm,
)
from voicegw.sip.digest import AuthorizationHeader, DigestClient, TrunkCredentials
from voicegw.sip.message import SipRequest, SipResponse, make_response, new_branch, parse_message
from voicegw.sip.security import BanList
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


async def start_service(sessions: Sessions, bans: BanList | None = None) -> SipService:
    config = SipServiceConfig(
        domain=DOMAIN, nonce_secret=SECRET, listen=ListenAddresses(udp=("127.0.0.1", 0))
    )
    service = SipService(config, sessions, bans=bans)
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
