"""Trunks: config validation, who an inbound trunk is, and where its credentials may go."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from voicegw.calls.routing import (
    ROUTES,
    Caller,
    CallerIdentity,
    Refusal,
    Route,
    Router,
    Service,
    Target,
)
from voicegw.calls.trunks import Trunk, TrunkIdentity, TrunkTable, trunk_table
from voicegw.config import ConfigError, Settings, load_settings
from voicegw.sip.digest import (
    AuthorizationHeader,
    DigestAuthenticator,
    RefusalReason,
    parse_credentials,
)
from voicegw.sip.digest import Refusal as GuardRefusal
from voicegw.sip.message import parse_request

CARRIER = """
[[trunks]]
name = "carrier-a"
tenant = "acme"
inbound_auth = "allow_list"
sources = ["192.0.2.0/28", "2001:db8:10::/64"]
[trunks.outbound]
host = "sip.carrier-a.example"
port = 5080
transport = "TCP"
username = "acme-trunk"
password = "hunter2-trunk-password"
realm = "carrier-a.example"
"""

PBX = """
[[trunks]]
name = "office-pbx"
tenant = "acme"
inbound_auth = "digest"
username = "pbx"
"""


def settings(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "voicegw.toml"
    path.write_text(text)
    return load_settings(path)


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as error:
        settings(tmp_path, text)
    return str(error.value)


# --- configuration --------------------------------------------------------------------------


def test_trunks_load_into_a_table_with_credentials_for_the_outbound_host(tmp_path: Path) -> None:
    table = trunk_table(settings(tmp_path, CARRIER + PBX).trunks)
    carrier = table.get("carrier-a")
    assert carrier is not None and carrier.outbound is not None
    assert carrier.tenant_id == "acme"
    assert (carrier.outbound.destination.host, carrier.outbound.destination.port) == (
        "sip.carrier-a.example",
        5080,
    )
    credentials = carrier.outbound.credentials
    assert credentials is not None
    assert (credentials.host, credentials.realm) == ("sip.carrier-a.example", "carrier-a.example")
    assert str(carrier.outbound.request_uri("+442079460123")) == (
        "sip:+442079460123@sip.carrier-a.example:5080;transport=tcp"
    )


def test_trunk_password_never_shows_in_repr(tmp_path: Path) -> None:
    loaded = settings(tmp_path, CARRIER)
    table = trunk_table(loaded.trunks)
    for shown in (repr(loaded), repr(loaded.trunks), repr(table.trunks)):
        assert "hunter2" not in shown


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CARRIER.replace('inbound_auth = "allow_list"', 'inbound_auth = "ip"'), "inbound_auth"),
        (CARRIER.replace('sources = ["192.0.2.0/28", "2001:db8:10::/64"]', ""), "needs sources"),
        (CARRIER.replace("192.0.2.0/28", "192.0.2.300/28"), "trunks.0.sources.0"),
        (CARRIER.replace("192.0.2.0/28", "0.0.0.0/0"), "too wide"),
        (CARRIER.replace("2001:db8:10::/64", "2001::/16"), "too wide"),
        (PBX.replace('username = "pbx"', ""), "needs username"),
        (CARRIER.replace('realm = "carrier-a.example"', ""), "go together"),
        (CARRIER.replace('transport = "TCP"', 'transport = "SCTP"'), "'UDP', 'TCP' or 'TLS'"),
        (CARRIER.replace('tenant = "acme"', 'tenant = "Acme Corp"'), "trunks.0.tenant"),
        (CARRIER.replace('name = "carrier-a"', "") + PBX, "trunks.0.name: Field required"),
        (CARRIER + CARRIER.replace("2001:db8:10::/64", "2001:db8:20::/64"), "unique"),
        (
            CARRIER
            + CARRIER.replace("carrier-a", "carrier-b").replace("192.0.2.0/28", "192.0.2.8/29"),
            "carrier-a and carrier-b have overlapping sources",
        ),
        (CARRIER.replace("[trunks.outbound]", "[trunks.outbound]\nproxy = 1"), "unknown key"),
        (CARRIER.replace('"hunter2-trunk-password"', "[2]"), "outbound.password"),
    ],
)
def test_invalid_trunk_config_is_refused_with_a_clear_error(
    tmp_path: Path, text: str, message: str
) -> None:
    error = config_error(tmp_path, text)
    assert message in error
    assert "hunter2" not in error and "[2]" not in error


# --- inbound identity ---------------------------------------------------------------------------


def allow_listed(name: str, tenant: str, *networks: str) -> Trunk:
    return Trunk(name, tenant, sources=tuple(ipaddress.ip_network(n) for n in networks))


TABLE = TrunkTable(
    [
        allow_listed("carrier-a", "acme", "192.0.2.0/28", "2001:db8:10::/64"),
        allow_listed("carrier-b", "globex", "198.51.100.7/32"),
        Trunk("office-pbx", "acme", username="pbx"),
    ]
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("192.0.2.1", TrunkIdentity("carrier-a", "acme")),
        ("192.0.2.15", TrunkIdentity("carrier-a", "acme")),
        ("::ffff:192.0.2.3", TrunkIdentity("carrier-a", "acme")),  # dual-stack socket
        ("2001:db8:10::5", TrunkIdentity("carrier-a", "acme")),
        ("[2001:db8:10::5]", TrunkIdentity("carrier-a", "acme")),
        ("198.51.100.7", TrunkIdentity("carrier-b", "globex")),
        ("192.0.2.16", None),
        ("198.51.100.8", None),
        ("2001:db8:11::5", None),
        ("carrier.example", None),  # names are never matched: only the packet's source
        ("", None),
    ],
)
def test_allow_list_matches_the_source_address_only(
    host: str, expected: TrunkIdentity | None
) -> None:
    assert TABLE.by_source(host) == expected


def test_digest_trunk_is_known_by_its_tenant_and_credential() -> None:
    assert TABLE.by_credential("acme", "pbx") == TrunkIdentity("office-pbx", "acme")
    assert TABLE.by_credential("globex", "pbx") is None
    assert TABLE.by_credential("acme", "alice") is None


# --- routing ------------------------------------------------------------------------------------

DIRECTORY = {"+442079460123": "acme", "+442079460999": "globex"}
CARRIER_A = CallerIdentity(Caller.TRUNK, "acme", "carrier-a")


async def owner(number: str) -> str | None:
    return DIRECTORY.get(number)


def invite(request_uri: str) -> bytes:
    return (
        f"INVITE {request_uri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-trunk\r\n"
        # Headers naming another tenant change nothing: the trunk's config decides.
        "From: <sip:+14155550123@globex.voice.test>;tag=t\r\n"
        "To: <sip:+442079460999@globex.voice.test>\r\n"
        "Call-ID: trunk-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("request_uri", "expected"),
    [
        ("sip:+442079460123@voice.test", Route(Service.AGENT_QUEUE, "acme", "+442079460123")),
        ("sip:+442079460999@voice.test", Refusal(403, "Forbidden")),
        ("sip:+14155550100@voice.test", Refusal(404, "Not Found")),
        ("sip:echo@acme.voice.test", Refusal(404, "Not Found")),
    ],
)
async def test_trunk_reaches_its_own_tenants_numbers_only(
    request_uri: str, expected: Route | Refusal
) -> None:
    decision = await Router(owner).route(parse_request(invite(request_uri)), CARRIER_A)
    assert decision == expected


def test_trunk_rows_never_reach_a_service_but_by_own_number() -> None:
    decided = {target for (kind, target) in ROUTES if kind is Caller.TRUNK}
    assert decided == set(Target)  # every target has a decision for trunks
    reachable = [t for (k, t), d in ROUTES.items() if k is Caller.TRUNK and isinstance(d, Service)]
    assert [t.value for t in reachable] == ["own-number"]


# --- outbound credentials: the guard -------------------------------------------------------------

CHALLENGE_AT = 1_700_000_000.0


def carrier_trunk(tmp_path: Path) -> Trunk:
    found = trunk_table(settings(tmp_path, CARRIER).trunks).get("carrier-a")
    assert found is not None
    return found


def challenge(realm: str) -> tuple[str, ...]:
    secret = b"carrier-nonce-secret-16"
    return DigestAuthenticator(realm, secret).challenge(CHALLENGE_AT).challenges


@pytest.mark.parametrize(
    ("target_host", "realm", "reason"),
    [
        ("127.0.0.1", "carrier-a.example", RefusalReason.HOST_MISMATCH),
        ("evil.example", "carrier-a.example", RefusalReason.HOST_MISMATCH),
        ("sip.carrier-a.example", "evil.example", RefusalReason.REALM_MISMATCH),
    ],
)
def test_trunk_credentials_are_refused_to_another_host_or_realm(
    tmp_path: Path, target_host: str, realm: str, reason: RefusalReason
) -> None:
    outbound = carrier_trunk(tmp_path).outbound
    assert outbound is not None
    client = outbound.digest_client()
    assert client is not None
    answer = client.respond(
        401, challenge(realm), method="INVITE", uri="sip:+1@x", target_host=target_host
    )
    assert answer == GuardRefusal(reason)


def test_trunk_credentials_answer_their_own_host_and_realm(tmp_path: Path) -> None:
    outbound = carrier_trunk(tmp_path).outbound
    assert outbound is not None
    client = outbound.digest_client()
    assert client is not None
    answer = client.respond(
        407,
        challenge("carrier-a.example"),
        method="INVITE",
        uri="sip:+442079460123@sip.carrier-a.example",
        target_host="SIP.Carrier-A.example.",
    )
    assert isinstance(answer, AuthorizationHeader)
    assert answer.name == "Proxy-Authorization"
    sent = parse_credentials(answer.value)
    assert (sent.username, sent.realm, sent.algorithm) == (
        "acme-trunk",
        "carrier-a.example",
        "SHA-256",
    )
    assert "hunter2" not in answer.value
