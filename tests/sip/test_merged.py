"""RFC 3261 §8.2.2.2: a request reaching us twice by different paths (a forking proxy, a
carrier trying two trunks at once) is answered 482 while the first copy is going on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.sip.test_transaction_layer import request
from voicegw.sip.merged import MergedRequests
from voicegw.sip.message import SipRequest
from voicegw.sip.transaction_events import TransactionId

FIRST, COPY, LATER = TransactionId(1), TransactionId(2), TransactionId(3)


def alive(*ongoing: TransactionId) -> Callable[[TransactionId], bool]:
    return lambda transaction: transaction in ongoing


def test_rfc3261_8_2_2_2_a_copy_by_another_path_is_merged_while_the_first_goes_on() -> None:
    merged = MergedRequests()
    assert not merged.is_merged(FIRST, request(branch="z9hG4bK-path-a"), alive(FIRST))
    assert merged.is_merged(COPY, request(branch="z9hG4bK-path-b"), alive(FIRST, COPY))


def test_once_the_first_is_over_the_same_request_is_new_again() -> None:
    merged = MergedRequests()
    merged.is_merged(FIRST, request(branch="z9hG4bK-a"), alive(FIRST))
    assert not merged.is_merged(COPY, request(branch="z9hG4bK-b"), alive(COPY))
    # ... and it is the original now.
    assert merged.is_merged(LATER, request(branch="z9hG4bK-c"), alive(COPY, LATER))


@pytest.mark.parametrize(
    "other",
    [
        request(cseq=2),  # the next request of the dialog-to-be (a challenged INVITE resent)
        request("OPTIONS"),  # same CSeq number, another method
        request(to_tag="a6c85cf"),  # in a dialog: the dialog layer's business
        request("ACK", to_tag="a6c85cf"),
        request("CANCEL"),  # matched to its INVITE by the transaction layer
    ],
)
def test_other_requests_of_the_same_call_are_not_copies(other: SipRequest) -> None:
    merged = MergedRequests()
    merged.is_merged(FIRST, request(), alive(FIRST))
    assert not merged.is_merged(COPY, other, alive(FIRST, COPY))


def test_the_same_transaction_is_never_its_own_copy() -> None:
    merged = MergedRequests()
    merged.is_merged(FIRST, request(), alive(FIRST))
    assert not merged.is_merged(FIRST, request(), alive(FIRST))


def test_memory_is_bounded_oldest_first() -> None:
    merged = MergedRequests(capacity=3)
    for n in range(10):
        merged.is_merged(TransactionId(n), request(cseq=n + 1), alive(TransactionId(n)))
    assert len(merged) == 3
    everyone = alive(*(TransactionId(n) for n in range(20)))
    assert not merged.is_merged(TransactionId(11), request(cseq=1), everyone)  # forgotten
    assert merged.is_merged(TransactionId(12), request(cseq=10), everyone)  # still watched
