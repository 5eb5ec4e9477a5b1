"""SIP over TLS on loopback with a certificate made here: the listener and outgoing connections.

The server side is the node's real SIP service (TLS listener, screening,
transactions, digest); the client is Python's ``ssl`` trusting only the
test's self-signed certificate, so a handshake that works proves the
listener serves that certificate, and one that fails proves verification.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from voicegw.calls.sip_service import SipService, SipServiceConfig
from voicegw.sip.digest import parse_challenge
from voicegw.sip.edge import InboundScreen
from voicegw.sip.message import SipMessage, SipResponse, new_branch
from voicegw.sip.message_framer import MessageReceived, StreamFramer
from voicegw.sip.security import BanList, RateLimiter
from voicegw.sip.transaction import Destination
from voicegw.sip.transport import ListenAddresses, SipTransports
from voicegw.store import migrate
from voicegw.store.db import create_engine, session_factory

DOMAIN = "voice.test"
TIMEOUT = 5.0


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Trusts exactly this certificate, with hostname (here: IP address) checks on."""
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voicegw test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths = Certificate(directory / "cert.pem", directory / "key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
async def service(tmp_path: Path, certificate: Certificate) -> AsyncIterator[SipService]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'voicegw.db'}")
    await migrate.upgrade(engine)
    node = SipService(
        SipServiceConfig(
            domain=DOMAIN,
            nonce_secret=b"0123456789abcdef-tls-secret",
            listen=ListenAddresses(tls=("127.0.0.1", 0)),
        ),
        session_factory(engine),
        tls_context=certificate.server_context(),
    )
    await node.start()
    yield node
    await node.stop()
    await engine.dispose()


def request(method: str, uri: str, local_port: int, to: str) -> bytes:
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 127.0.0.1:{local_port};branch={new_branch()};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <{to}>;tag=tls-client\r\nTo: <{to}>\r\n"
        f"Call-ID: {new_branch()}@tls-client\r\nCSeq: 1 {method}\r\n"
        f"Contact: <sip:alice@127.0.0.1:{local_port};transport=tls>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def read_message(reader: asyncio.StreamReader) -> SipMessage:
    framer = StreamFramer()
    while True:
        data = await asyncio.wait_for(reader.read(4096), TIMEOUT)
        assert data, "the server closed the TLS connection"
        for event in framer.feed(data):
            if isinstance(event, MessageReceived):
                return event.message


async def exchange(service: SipService, context: ssl.SSLContext, method: str) -> SipResponse:
    """One request over a fresh TLS connection from a Python ``ssl`` client; the response."""
    bound = service.transports.bound.tls
    assert bound is not None
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*bound, ssl=context), TIMEOUT)
    try:
        assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        local_port = writer.get_extra_info("sockname")[1]
        uri, to = (
            (f"sip:acme.{DOMAIN}", f"sip:alice@acme.{DOMAIN}")
            if method == "REGISTER"
            else (f"sip:{DOMAIN}", f"sip:probe@{DOMAIN}")
        )
        writer.write(request(method, uri, local_port, to))
        await writer.drain()
        response = await read_message(reader)
        assert isinstance(response, SipResponse)
        return response
    finally:
        writer.close()
        await writer.wait_closed()


async def test_options_over_tls_is_answered_on_the_same_connection(
    service: SipService, certificate: Certificate
) -> None:
    response = await exchange(service, certificate.client_context(), "OPTIONS")
    assert (response.status, response.cseq.method) == (200, "OPTIONS")
    allow = response.headers.get("Allow")
    assert allow is not None and "REGISTER" in allow


async def test_register_over_tls_is_challenged_with_sha256_first(
    service: SipService, certificate: Certificate
) -> None:
    response = await exchange(service, certificate.client_context(), "REGISTER")
    assert response.status == 401
    challenges = [parse_challenge(v) for v in response.headers.get_all("WWW-Authenticate")]
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert {c.realm for c in challenges} == {f"acme.{DOMAIN}"}


async def test_client_that_does_not_trust_the_certificate_gets_no_sip_at_all(
    service: SipService,
) -> None:
    bound = service.transports.bound.tls
    assert bound is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.wait_for(
            asyncio.open_connection(*bound, ssl=ssl.create_default_context()), TIMEOUT
        )


@dataclass
class PeerServer:
    """A TLS peer (a trunk, a phone) that collects what it is sent."""

    received: asyncio.Queue[SipMessage]
    server: asyncio.Server

    @property
    def port(self) -> int:
        port: int = self.server.sockets[0].getsockname()[1]
        return port


@pytest.fixture
async def peer(certificate: Certificate) -> AsyncIterator[PeerServer]:
    received: asyncio.Queue[SipMessage] = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        framer = StreamFramer()
        while data := await reader.read(4096):
            for event in framer.feed(data):
                if isinstance(event, MessageReceived):
                    received.put_nowait(event.message)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=certificate.server_context())
    yield PeerServer(received, server)
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


def transports(client_context: ssl.SSLContext | None) -> SipTransports:
    screen = InboundScreen(BanList(), RateLimiter(rate=50.0, burst=100.0))
    return SipTransports(screen, lambda message, source: None, client_tls_context=client_context)


async def test_send_opens_a_verified_tls_connection_and_reuses_it(
    peer: PeerServer, certificate: Certificate
) -> None:
    sender = transports(certificate.client_context())
    destination = Destination("127.0.0.1", peer.port, "TLS")
    try:
        for n in (1, 2):
            message = request("OPTIONS", f"sip:peer@127.0.0.1:{peer.port}", 5061, "sip:a@b")
            await sender.send(message.replace(b"CSeq: 1", f"CSeq: {n}".encode()), destination)
            got = await asyncio.wait_for(peer.received.get(), TIMEOUT)
            assert got.cseq.seq == n
        assert len(sender._streams) == 1  # the second request went over the same connection
    finally:
        await sender.close()


async def test_send_refuses_a_peer_whose_certificate_does_not_verify(peer: PeerServer) -> None:
    # Default: the system's CAs, which do not know the self-signed test certificate.
    sender = transports(None)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await sender.send(
                request("OPTIONS", "sip:peer@127.0.0.1", 5061, "sip:a@b"),
                Destination("127.0.0.1", peer.port, "TLS"),
            )
        assert peer.received.empty()
    finally:
        await sender.close()
