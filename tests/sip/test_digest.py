"""Digest authentication (RFC 2617, RFC 7616, RFC 8760): vectors, server, client, guard."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicegw.sip.digest import (
    Accepted,
    AuthAttempt,
    AuthorizationHeader,
    Credentials,
    DigestAuthenticator,
    DigestClient,
    DigestError,
    Refusal,
    RefusalReason,
    Rejection,
    RejectReason,
    TrunkCredentials,
    compute_response,
    credential_guard,
    ha1,
    parse_auth_header,
    parse_challenge,
    parse_credentials,
)

# --- RFC test vectors ------------------------------------------------------

RFC2617_AUTHORIZATION = (
    'Digest username="Mufasa", realm="testrealm@host.com", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", '
    'qop=auth, nc=00000001, cnonce="0a4f113b", '
    'response="6629fae49393a05397450978507c4ef1", '
    'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)


def test_rfc2617_section_3_5_example_response() -> None:
    creds = parse_credentials(RFC2617_AUTHORIZATION)
    assert creds == Credentials(
        username="Mufasa",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        uri="/dir/index.html",
        response="6629fae49393a05397450978507c4ef1",
        algorithm="MD5",
        qop="auth",
        nc=1,
        cnonce="0a4f113b",
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
    )
    key = ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert creds.response == compute_response(
        key,
        algorithm_name="MD5",
        nonce=creds.nonce,
        method="GET",
        uri=creds.uri,
        qop="auth",
        nc=1,
        cnonce=creds.cnonce,
    )


RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize(
    ("algorithm", "response"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_examples(algorithm: str, response: str) -> None:
    key = ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm)
    assert response == compute_response(
        key,
        algorithm_name=algorithm,
        nonce=RFC7616_NONCE,
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc=1,
        cnonce=RFC7616_CNONCE,
    )


def test_rfc7616_challenge_example_parses() -> None:
    challenge = parse_challenge(
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
        f'nonce="{RFC7616_NONCE}", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    assert challenge.algorithm == "SHA-256"
    assert challenge.qop == ("auth", "auth-int")
    assert challenge.nonce == RFC7616_NONCE
    assert not challenge.stale


# --- header grammar ----------------------------------------------------------


def test_quoted_strings_keep_commas_and_unescape_quoted_pairs() -> None:
    scheme, params = parse_auth_header(r'Digest username="a\"b,c", realm = "x\\y" ,nc=00000001')
    assert scheme == "Digest"
    assert params == {"username": 'a"b,c', "realm": "x\\y", "nc": "00000001"}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "authentication header has no scheme"),
        ("Digest", "authentication header has no scheme"),
        ("Digest realm", "malformed authentication parameter"),
        ('Digest realm="unterminated', "malformed authentication parameter"),
        ('Digest realm="a" nonce="b"', "malformed authentication parameter list"),
        ('Digest realm="a",', "malformed authentication parameter"),
        ('Digest realm="a", realm="b"', "duplicate authentication parameter"),
        ('Basic realm="a"', "authentication scheme is not Digest"),
        ('Digest realm="a", nonce="b"', "digest credentials lack a required parameter"),
        (
            'Digest username="u", realm="r", nonce="n", uri="sip:x", response="0", qop=auth',
            "qop given without nc and cnonce",
        ),
        (
            'Digest username="u", realm="r", nonce="n", uri="sip:x", response="0", qop=auth, '
            'nc=1, cnonce="c"',
            "nonce-count is not 8 hex digits",
        ),
        (
            'Digest username="u", realm="r", nonce="n", uri="sip:x", response="0", algorithm=SHA1',
            "unsupported digest algorithm",
        ),
        ("Digest realm=" + "a" * 5000, "authentication header too long"),
        ('Digest username="\udcff"', "authentication header is not valid UTF-8"),
    ],
)
def test_malformed_authorization_values_raise_digest_error(value: str, reason: str) -> None:
    with pytest.raises(DigestError) as caught:
        parse_credentials(value)
    assert caught.value.reason == reason


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.lists(
            st.sampled_from(
                ["Digest ", "username=", '"u"', ", ", "realm=", '"r\\"', "nc=", "00000001", "="]
            ),
            max_size=20,
        ).map("".join),
    )
)
def test_any_string_either_parses_or_raises_digest_error(value: str) -> None:
    for parse in (parse_auth_header, parse_credentials, parse_challenge):
        try:
            parse(value)
        except DigestError:
            continue


# --- server ------------------------------------------------------------------

REALM = "sip.voicegw.example"
SECRET = b"0123456789abcdef0123456789abcdef"
USERS = {"alice": "wonderland"}


def lookup(username: str, algorithm: str) -> str | None:
    password = USERS.get(username)
    return None if password is None else ha1(username, REALM, password, algorithm)


def counter_bytes() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def server(**kwargs: object) -> DigestAuthenticator:
    return DigestAuthenticator(REALM, SECRET, random_bytes=lambda n: b"\x01" * n, **kwargs)  # type: ignore[arg-type]


def client(password: str = USERS["alice"], username: str = "alice") -> DigestClient:
    trunk = TrunkCredentials(username, password, REALM, "pbx.example")
    return DigestClient(trunk, random_bytes=counter_bytes())


def answer(
    digest_client: DigestClient,
    rejection: Rejection,
    attempt: AuthAttempt | None = None,
    uri: str = "sip:pbx.example",
) -> AuthorizationHeader:
    header = digest_client.respond(
        401,
        rejection.challenges,
        method="REGISTER",
        uri=uri,
        target_host="pbx.example",
        attempt=attempt,
    )
    assert isinstance(header, AuthorizationHeader)
    return header


def test_challenge_offers_sha256_then_md5_with_qop_auth_and_opaque() -> None:
    first, second = server().challenge(now=1000.0).challenges
    sha256, md5 = parse_challenge(first), parse_challenge(second)
    assert (sha256.algorithm, md5.algorithm) == ("SHA-256", "MD5")
    assert sha256.realm == md5.realm == REALM
    assert sha256.qop == md5.qop == ("auth",)
    assert sha256.opaque is not None and sha256.opaque == md5.opaque
    assert first.startswith(f'Digest realm="{REALM}", nonce="')


@pytest.mark.parametrize("algorithms", [("SHA-256", "MD5"), ("MD5",)])
def test_a_client_answer_to_our_challenge_is_accepted(algorithms: tuple[str, ...]) -> None:
    auth = server(algorithms=algorithms)
    header = answer(client(), auth.challenge(now=1000.0))
    assert parse_credentials(header.value).algorithm == algorithms[0]
    result = auth.verify([header.value], method="REGISTER", now=1001.0, lookup=lookup)
    assert result == Accepted("alice", algorithms[0])


def test_replayed_nonce_count_is_rejected_and_the_next_count_accepted() -> None:
    auth, alice = server(), client()
    challenge = auth.challenge(now=1000.0)
    header = answer(alice, challenge)
    verify = auth.verify
    accepted = verify([header.value], method="REGISTER", now=1001.0, lookup=lookup)
    assert isinstance(accepted, Accepted)
    replay = verify([header.value], method="REGISTER", now=1002.0, lookup=lookup)
    assert isinstance(replay, Rejection)
    assert replay.reason is RejectReason.REPLAY
    assert not replay.counts_as_failure  # an on-path replayer must not get the victim banned

    alice_again = DigestClient(alice.credentials, random_bytes=lambda n: b"\x00" * n)
    first = answer(alice_again, challenge).value
    second = answer(alice_again, challenge).value  # same nonce, same cnonce, nc=2
    assert 'cnonce="000000000000000000000000"' in first and "nc=00000002" in second
    assert isinstance(verify([first], method="REGISTER", now=1003.0, lookup=lookup), Accepted)
    assert isinstance(verify([second], method="REGISTER", now=1004.0, lookup=lookup), Accepted)
    replay_of_older_count = verify([first], method="REGISTER", now=1005.0, lookup=lookup)
    assert isinstance(replay_of_older_count, Rejection)
    assert replay_of_older_count.reason is RejectReason.REPLAY


def test_expired_nonce_with_right_password_gets_stale_true() -> None:
    auth = server(nonce_ttl=300.0)
    header = answer(client(), auth.challenge(now=1000.0))
    result = auth.verify([header.value], method="REGISTER", now=1301.0, lookup=lookup)
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.STALE_NONCE
    assert all(parse_challenge(value).stale for value in result.challenges)
    assert all(value.endswith(", stale=true") for value in result.challenges)


def test_expired_nonce_with_wrong_password_is_not_called_stale() -> None:
    auth = server(nonce_ttl=300.0)
    header = answer(client(password="guess"), auth.challenge(now=1000.0))
    result = auth.verify([header.value], method="REGISTER", now=1301.0, lookup=lookup)
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.WRONG_RESPONSE
    assert not any(parse_challenge(value).stale for value in result.challenges)


def test_unknown_user_and_wrong_password_get_byte_identical_rejections() -> None:
    auth = server()
    challenge = auth.challenge(now=1000.0)
    wrong_password = answer(client(password="guess"), challenge).value
    unknown_user = answer(client(username="mallory"), challenge).value
    a = auth.verify([wrong_password], method="REGISTER", now=1001.0, lookup=lookup)
    b = auth.verify([unknown_user], method="REGISTER", now=1001.0, lookup=lookup)
    assert isinstance(a, Rejection)
    assert a == b
    assert [v.encode() for v in a.challenges] == [v.encode() for v in b.challenges]
    assert a.reason is RejectReason.WRONG_RESPONSE and a.counts_as_failure


def test_nonce_bound_to_one_source_is_refused_from_another() -> None:
    auth = server()
    header = answer(client(), auth.challenge(now=1000.0, client_key="192.0.2.1"))
    ok = auth.verify(
        [header.value], method="REGISTER", now=1001.0, lookup=lookup, client_key="192.0.2.1"
    )
    assert isinstance(ok, Accepted)
    header = answer(client(), auth.challenge(now=1000.0, client_key="192.0.2.1"))
    moved = auth.verify(
        [header.value], method="REGISTER", now=1001.0, lookup=lookup, client_key="198.51.100.7"
    )
    assert isinstance(moved, Rejection)
    assert (moved.reason, moved.counts_as_failure) == (RejectReason.BAD_NONCE, False)


def test_forged_or_tampered_nonces_are_refused() -> None:
    auth = server()
    header = answer(client(), auth.challenge(now=1000.0)).value
    nonce = parse_credentials(header).nonce
    for forged in (nonce[:-2] + ("AA" if nonce[-2:] != "AA" else "BB"), "abc", "!" * len(nonce)):
        result = auth.verify(
            [header.replace(nonce, forged)], method="REGISTER", now=1001.0, lookup=lookup
        )
        assert isinstance(result, Rejection)
        assert result.reason is RejectReason.BAD_NONCE


def test_nonce_from_the_future_is_refused() -> None:
    auth = server()
    header = answer(client(), auth.challenge(now=5000.0)).value
    result = auth.verify([header], method="REGISTER", now=1000.0, lookup=lookup)
    assert isinstance(result, Rejection) and result.reason is RejectReason.BAD_NONCE


@pytest.mark.parametrize(
    ("edit", "uri"),
    [
        (lambda h: h.replace("algorithm=SHA-256", "algorithm=MD5-sess"), None),
        (lambda h: h.replace("qop=auth, ", ""), None),
        (lambda h: h.replace('opaque="', 'opaque="x'), None),
        (lambda h: h, "sip:other.example"),
        (lambda h: "Digest", None),
    ],
)
def test_credentials_outside_what_we_offered_are_malformed(
    edit: Callable[[str], str], uri: str | None
) -> None:
    auth = server()
    header = edit(answer(client(), auth.challenge(now=1000.0)).value)
    result = auth.verify([header], method="REGISTER", now=1001.0, lookup=lookup, request_uri=uri)
    assert isinstance(result, Rejection) and result.reason is RejectReason.MALFORMED


def test_credentials_for_another_realm_only_earn_a_challenge() -> None:
    auth = server()
    other = 'Digest username="a", realm="elsewhere", nonce="n", uri="sip:x", response="0"'
    result = auth.verify([other], method="INVITE", now=1.0, lookup=lookup)
    assert isinstance(result, Rejection) and result.reason is RejectReason.NO_CREDENTIALS
    assert result == auth.challenge(now=1.0)


def test_nonce_count_memory_is_bounded_and_forgetting_never_reopens_a_replay() -> None:
    auth = server(max_tracked_nonces=2)
    alice = client()
    headers = [answer(alice, auth.challenge(now=1000.0 + i)).value for i in range(3)]
    for i, header in enumerate(headers):
        result = auth.verify([header], method="REGISTER", now=1010.0 + i, lookup=lookup)
        assert isinstance(result, Accepted)
    replay = auth.verify([headers[0]], method="REGISTER", now=1020.0, lookup=lookup)
    assert isinstance(replay, Rejection)
    assert replay.reason is RejectReason.STALE_NONCE  # evicted: re-challenged, not accepted


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=120), max_size=3))
def test_verify_never_raises_on_any_authorization_values(values: list[str]) -> None:
    result = server().verify(values, method="INVITE", now=1.0, lookup=lookup)
    assert isinstance(result, Rejection)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(
        ["username", "realm", "nonce", "uri", "response", "algorithm", "qop", "nc", "cnonce"]
    ),
    value=st.one_of(st.text(max_size=40), st.sampled_from(["", "00000000", "ffffffff", "MD5"])),
)
def test_verify_never_raises_when_one_field_of_a_valid_answer_is_replaced(
    name: str, value: str
) -> None:
    auth = server()
    _, params = parse_auth_header(answer(client(), auth.challenge(now=1000.0)).value)
    params[name] = value
    header = "Digest " + ", ".join(f"{k}={_quoted(v)}" for k, v in params.items())
    result = auth.verify([header], method="REGISTER", now=1001.0, lookup=lookup)
    assert isinstance(result, Accepted | Rejection)


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        DigestAuthenticator(REALM, b"short")


# --- client --------------------------------------------------------------------

TRUNK = TrunkCredentials("trunkuser", "s3cret", "carrier.example", "sip.carrier.example")


def challenge_value(algorithm: str = "MD5", realm: str = "carrier.example", **extra: str) -> str:
    params = [f'realm="{realm}"', 'nonce="abc123"', f"algorithm={algorithm}", 'qop="auth"']
    params += [f"{k}={v}" for k, v in extra.items()]
    return "Digest " + ", ".join(params)


def respond(
    challenges: list[str],
    *,
    status: int = 401,
    target: str = "sip.carrier.example",
    attempt: AuthAttempt | None = None,
) -> AuthorizationHeader | Refusal:
    return DigestClient(TRUNK, random_bytes=counter_bytes()).respond(
        status,
        challenges,
        method="INVITE",
        uri="sip:+6561234567@sip.carrier.example",
        target_host=target,
        attempt=attempt,
    )


def test_client_prefers_sha256_whatever_the_header_order() -> None:
    result = respond([challenge_value("MD5"), challenge_value("SHA-256")])
    assert isinstance(result, AuthorizationHeader)
    creds = parse_credentials(result.value)
    assert (result.name, creds.algorithm, creds.qop, creds.nc) == (
        "Authorization",
        "SHA-256",
        "auth",
        1,
    )
    expected = compute_response(
        ha1("trunkuser", "carrier.example", "s3cret", "SHA-256"),
        algorithm_name="SHA-256",
        nonce="abc123",
        method="INVITE",
        uri="sip:+6561234567@sip.carrier.example",
        qop="auth",
        nc=1,
        cnonce=creds.cnonce,
    )
    assert creds.response == expected


def test_proxy_challenge_is_answered_with_proxy_authorization() -> None:
    result = respond([challenge_value()], status=407)
    assert isinstance(result, AuthorizationHeader) and result.name == "Proxy-Authorization"


def test_client_answers_rfc2069_challenges_without_qop() -> None:
    result = respond(['Digest realm="carrier.example", nonce="n0"'])
    assert isinstance(result, AuthorizationHeader)
    creds = parse_credentials(result.value)
    assert creds.qop is None and "cnonce" not in result.value
    key = ha1("trunkuser", "carrier.example", "s3cret")
    assert creds.response == compute_response(
        key, algorithm_name="MD5", nonce="n0", method="INVITE", uri=creds.uri
    )


def test_digest_leak_guard_refuses_a_callee_claiming_the_trunk_realm() -> None:
    """The outbound INVITE went to a callee's own host, which challenges it: never answer."""
    result = respond([challenge_value()], target="evil.example")
    assert result == Refusal(RefusalReason.HOST_MISMATCH)


def test_guard_refuses_a_challenge_for_another_realm_from_the_trunk_host() -> None:
    assert respond([challenge_value(realm="other")]) == Refusal(RefusalReason.REALM_MISMATCH)


@pytest.mark.parametrize(
    ("realm", "host", "expected"),
    [
        ("carrier.example", "sip.carrier.example", None),
        ("carrier.example", "SIP.Carrier.Example.", None),
        ("carrier.example", "sip.carrier.example.evil", RefusalReason.HOST_MISMATCH),
        ("Carrier.example", "sip.carrier.example", RefusalReason.REALM_MISMATCH),
        ("other", "elsewhere", RefusalReason.HOST_MISMATCH),
    ],
)
def test_credential_guard_table(realm: str, host: str, expected: RefusalReason | None) -> None:
    refusal = credential_guard(realm, host, TRUNK)
    assert (refusal.reason if refusal else None) == expected


def test_unusable_challenges_are_refused() -> None:
    auth_int_only = challenge_value().replace('qop="auth"', 'qop="auth-int"')
    for values in ([auth_int_only], ['Basic realm="carrier.example"'], ["garbage"], []):
        assert respond(values) == Refusal(RefusalReason.NO_USABLE_CHALLENGE)


def test_second_challenge_means_rejected_unless_stale_which_is_retried_once() -> None:
    first = respond([challenge_value()])
    assert isinstance(first, AuthorizationHeader)
    assert respond([challenge_value()], attempt=first.attempt) == Refusal(
        RefusalReason.CREDENTIALS_REJECTED
    )
    stale = respond([challenge_value(stale="true")], attempt=first.attempt)
    assert isinstance(stale, AuthorizationHeader)
    assert respond([challenge_value(stale="true")], attempt=stale.attempt) == Refusal(
        RefusalReason.CREDENTIALS_REJECTED
    )


def test_proxy_then_server_challenges_are_each_answered() -> None:
    proxy = respond([challenge_value()], status=407)
    assert isinstance(proxy, AuthorizationHeader)
    server_challenge = respond([challenge_value()], status=401, attempt=proxy.attempt)
    assert isinstance(server_challenge, AuthorizationHeader)


def test_passwords_do_not_appear_in_repr() -> None:
    assert "s3cret" not in repr(TRUNK)
