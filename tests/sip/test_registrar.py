"""The registrar of RFC 3261 §10.3: one authenticated REGISTER in, a response and changes out."""

from __future__ import annotations

from collections.abc import Sequence

from voicegw.sip.message import SipRequest, parse_request
from voicegw.sip.registrar import (
    Binding,
    Refusal,
    RegisterResult,
    RegistrarPolicy,
    address_of_record,
    process_register,
    same_uri,
)
from voicegw.sip.transaction import Destination
from voicegw.sip.uri import parse_sip_uri, parse_uri

DOMAIN = "acme.voice.test"
NOW = 1_800_000_000.0
SOURCE = Destination("127.0.0.1", 5062, "UDP")
POLICY = RegistrarPolicy(min_expires=60, max_expires=3600, default_expires=3600, max_bindings=3)


def register(
    *contacts: str,
    user: str = "alice",
    to_host: str = DOMAIN,
    call_id: str = "reg-1@ua",
    cseq: int = 1,
    expires: int | None = None,
    extra: Sequence[str] = (),
) -> SipRequest:
    lines = [
        f"REGISTER sip:{DOMAIN} SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-reg;rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{to_host}>;tag=ua1",
        f"To: <sip:{user}@{to_host}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        *(f"Contact: {c}" for c in contacts),
        *([] if expires is None else [f"Expires: {expires}"]),
        *extra,
    ]
    return parse_request(("\r\n".join(lines) + "\r\n\r\n").encode())


def run(
    request: SipRequest, current: Sequence[Binding] = (), now: float = NOW, user: str = "alice"
) -> RegisterResult:
    return process_register(
        request,
        username=user,
        domain=DOMAIN,
        current=current,
        source=SOURCE,
        now=now,
        policy=POLICY,
    )


def contacts_of(result: RegisterResult) -> dict[str, str]:
    """Contact URI -> expires param, as listed in the 200 OK."""
    listed = {}
    for value in result.response.headers.values("Contact"):
        uri, _, params = value.partition(">;expires=")
        listed[uri.lstrip("<")] = params
    return listed


def test_rfc3261_10_3_a_new_contact_is_bound_and_listed_with_its_expiry() -> None:
    result = run(register("<sip:alice@127.0.0.1:5062>", expires=600))
    assert result.response.status == 200
    assert [b.contact for b in result.saved] == ["sip:alice@127.0.0.1:5062"]
    binding = result.saved[0]
    assert binding.aor == "sip:alice@acme.voice.test"
    assert binding.expires_at == NOW + 600
    assert (binding.call_id, binding.cseq, binding.source) == ("reg-1@ua", 1, SOURCE)
    assert contacts_of(result) == {"sip:alice@127.0.0.1:5062": "600"}
    assert result.response.headers.get("Date") is not None
    assert result.response.to.tag is not None


def test_rfc3261_10_3_step7_contact_expires_param_wins_over_the_expires_header() -> None:
    result = run(register("<sip:alice@10.0.0.1>;expires=120", "<sip:alice@10.0.0.2>", expires=900))
    assert contacts_of(result) == {"sip:alice@10.0.0.1": "120", "sip:alice@10.0.0.2": "900"}


def test_rfc3261_10_2_1_1_no_expiry_given_means_the_default() -> None:
    assert contacts_of(run(register("<sip:alice@10.0.0.1>"))) == {"sip:alice@10.0.0.1": "3600"}


def test_rfc3261_10_3_step7_a_too_long_interval_is_shortened_to_the_maximum() -> None:
    result = run(register("<sip:alice@10.0.0.1>", expires=86400))
    assert contacts_of(result) == {"sip:alice@10.0.0.1": "3600"}


def test_rfc3261_10_3_step7_a_too_brief_interval_gets_423_with_min_expires() -> None:
    result = run(register("<sip:alice@10.0.0.1>", expires=30))
    assert (result.response.status, result.response.reason) == (423, "Interval Too Brief")
    assert result.response.headers.get("Min-Expires") == "60"
    assert result.refusal is Refusal.INTERVAL_TOO_BRIEF
    assert (result.saved, result.removed) == ((), ())


def test_rfc3261_10_2_4_a_refresh_from_the_same_call_id_extends_the_binding() -> None:
    first = run(register("<sip:alice@10.0.0.1>", expires=600))
    later = run(register("<sip:alice@10.0.0.1>", cseq=2, expires=600), first.bindings, NOW + 300)
    assert later.response.status == 200
    assert [b.expires_at for b in later.saved] == [NOW + 900]
    assert later.removed == ()  # same contact string: an update, not a delete
    assert contacts_of(later) == {"sip:alice@10.0.0.1": "600"}


def test_rfc3261_10_3_step7_same_call_id_and_lower_or_equal_cseq_fails_changing_nothing() -> None:
    first = run(register("<sip:alice@10.0.0.1>", cseq=5, expires=600))
    for cseq in (5, 4):
        stale = run(register("<sip:alice@10.0.0.1>", cseq=cseq, expires=0), first.bindings)
        assert stale.response.status == 500
        assert stale.refusal is Refusal.OUT_OF_ORDER
        assert (stale.saved, stale.removed, stale.bindings) == ((), (), first.bindings)


def test_rfc3261_10_3_step7_another_call_id_may_update_whatever_its_cseq() -> None:
    first = run(register("<sip:alice@10.0.0.1>", cseq=9, expires=600))
    other = run(register("<sip:alice@10.0.0.1>", call_id="reboot@ua", cseq=1), first.bindings)
    assert other.response.status == 200
    assert [(b.call_id, b.cseq) for b in other.bindings] == [("reboot@ua", 1)]


def test_rfc3261_10_2_2_expires_zero_removes_one_binding_and_keeps_the_others() -> None:
    first = run(register("<sip:alice@10.0.0.1>", "<sip:alice@10.0.0.2>", expires=600))
    result = run(register("<sip:alice@10.0.0.1>;expires=0", cseq=2), first.bindings)
    assert result.response.status == 200
    assert [b.contact for b in result.removed] == ["sip:alice@10.0.0.1"]
    assert contacts_of(result) == {"sip:alice@10.0.0.2": "600"}


def test_rfc3261_10_2_2_wildcard_with_expires_zero_removes_every_binding() -> None:
    first = run(register("<sip:alice@10.0.0.1>", "<sip:alice@10.0.0.2>", expires=600))
    result = run(register("*", cseq=2, expires=0), first.bindings)
    assert result.response.status == 200
    assert result.bindings == ()
    assert {b.contact for b in result.removed} == {"sip:alice@10.0.0.1", "sip:alice@10.0.0.2"}
    assert result.response.headers.values("Contact") == []


def test_rfc3261_10_3_step6_wildcard_without_expires_zero_is_a_bad_request() -> None:
    for request in (register("*", expires=60), register("*")):
        result = run(request)
        assert result.response.status == 400
        assert result.refusal is Refusal.WILDCARD_MISUSED


def test_rfc3261_10_3_step6_wildcard_must_respect_call_id_ordering() -> None:
    first = run(register("<sip:alice@10.0.0.1>", cseq=3, expires=600))
    result = run(register("*", cseq=3, expires=0), first.bindings)
    assert result.response.status == 500
    assert result.removed == ()


def test_rfc3261_10_2_3_a_register_without_contact_lists_the_bindings() -> None:
    first = run(register("<sip:alice@10.0.0.1>", expires=600))
    query = run(register(call_id="query@ua"), first.bindings, NOW + 100)
    assert query.response.status == 200
    assert (query.saved, query.removed) == ((), ())
    assert contacts_of(query) == {"sip:alice@10.0.0.1": "500"}


def test_expired_bindings_are_neither_listed_nor_kept() -> None:
    first = run(register("<sip:alice@10.0.0.1>", expires=60))
    later = run(register("<sip:alice@10.0.0.2>", call_id="x@ua"), first.bindings, NOW + 61)
    assert list(contacts_of(later)) == ["sip:alice@10.0.0.2"]
    assert [b.contact for b in later.removed] == ["sip:alice@10.0.0.1"]


def test_rfc3261_19_1_4_an_equivalent_contact_updates_the_existing_binding() -> None:
    first = run(register("<sip:alice@Host.Example:5070;transport=udp>", expires=600))
    again = run(register("<sip:alice@host.example:5070;transport=UDP>", cseq=2), first.bindings)
    assert len(again.bindings) == 1
    assert [b.contact for b in again.removed] == ["sip:alice@Host.Example:5070;transport=udp"]


def test_rfc3261_19_1_4_uri_comparison_rules() -> None:
    def same(a: str, b: str) -> bool:
        return same_uri(parse_sip_uri(a), parse_sip_uri(b))

    assert same("sip:alice@EXAMPLE.com", "sip:alice@example.com")
    assert not same("sip:Alice@example.com", "sip:alice@example.com")  # user is case-sensitive
    assert not same("sip:alice@example.com", "sip:alice@example.com:5060")  # explicit default port
    assert not same("sip:alice@example.com", "sip:alice@example.com;transport=udp")
    assert same("sip:alice@example.com;ob", "sip:alice@example.com")  # others only if in both
    assert not same("sip:alice@example.com;x=1", "sip:alice@example.com;x=2")


def test_rfc3261_10_3_step4_registering_someone_elses_aor_is_forbidden() -> None:
    result = run(register("<sip:mallory@10.6.6.6>", user="bob"), user="mallory")
    assert result.response.status == 403
    assert result.refusal is Refusal.NOT_YOUR_AOR
    assert result.saved == ()


def test_rfc3261_10_3_step5_an_aor_outside_the_domain_is_not_found() -> None:
    result = run(register("<sip:alice@10.0.0.1>", to_host="other.voice.test"))
    assert result.response.status == 404
    assert result.refusal is Refusal.NOT_OUR_DOMAIN


def test_rfc3261_10_3_step2_an_unknown_required_extension_gets_420() -> None:
    result = run(register("<sip:alice@10.0.0.1>", extra=["Require: path, gruu"]))
    assert result.response.status == 420
    assert result.response.headers.get("Unsupported") == "path, gruu"


def test_a_non_sip_contact_is_refused() -> None:
    result = run(register("<tel:+15551234567>"))
    assert result.response.status == 400
    assert result.refusal is Refusal.CONTACT_NOT_SIP


def test_a_malformed_contact_expires_is_a_bad_request() -> None:
    result = run(register("<sip:alice@10.0.0.1>;expires=soon"))
    assert result.response.status == 400
    assert result.refusal is Refusal.MALFORMED


def test_contacts_and_call_ids_longer_than_the_store_holds_are_refused() -> None:
    long_contact = run(register(f"<sip:alice@10.0.0.1;x={'a' * 1100}>"))
    assert long_contact.refusal is Refusal.TOO_LONG
    long_call_id = run(register("<sip:alice@10.0.0.1>", call_id="c" * 300))
    assert long_call_id.refusal is Refusal.TOO_LONG
    assert long_call_id.response.status == 400


def test_the_binding_cap_refuses_the_whole_request() -> None:
    first = run(register(*(f"<sip:alice@10.0.0.{i}>" for i in range(1, 4)), expires=600))
    assert len(first.bindings) == 3
    over = run(register("<sip:alice@10.0.0.9>", call_id="y@ua"), first.bindings)
    assert over.response.status == 403
    assert over.refusal is Refusal.TOO_MANY_BINDINGS
    assert over.bindings == first.bindings


def test_the_same_contact_twice_in_one_request_binds_once_with_the_last_expiry() -> None:
    result = run(register("<sip:alice@10.0.0.1>;expires=100", "<sip:alice@10.0.0.1>;expires=200"))
    assert result.response.status == 200
    assert [b.expires_at for b in result.bindings] == [NOW + 200]


def test_address_of_record_drops_port_params_and_case_of_host() -> None:
    assert address_of_record(parse_uri("sip:alice@ACME.voice.test:5060;transport=tcp")) == (
        "sip:alice@acme.voice.test"
    )
    assert address_of_record(parse_uri("sip:acme.voice.test")) is None
    assert address_of_record(parse_uri("tel:+15551234567")) is None
