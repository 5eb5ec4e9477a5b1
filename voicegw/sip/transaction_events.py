"""What the transaction layer hands back: messages to send and events for the TU.

All frozen dataclasses, so a TU (or a test) can compare them by value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

from voicegw.sip.message import SipRequest, SipResponse
from voicegw.sip.transaction import Destination

TransactionId = NewType("TransactionId", int)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to put on the wire; ``transaction`` is None for stateless sends."""

    message: SipRequest | SipResponse
    destination: Destination
    transaction: TransactionId | None


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request for the TU. ``transaction`` is None for an ACK outside any
    transaction (the ACK for a 2xx, which the dialog consumes)."""

    transaction: TransactionId | None
    request: SipRequest
    source: Destination


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    transaction: TransactionId
    response: SipResponse


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """§9.2: the INVITE ``transaction`` was cancelled (200 to the CANCEL already sent);
    the TU should answer the INVITE with 487."""

    transaction: TransactionId
    cancel: SipRequest


@dataclass(frozen=True, slots=True)
class TransactionTimedOut:
    """Timer B or F (no final response: treat as 408) or H (our final was never ACKed)."""

    transaction: TransactionId


@dataclass(frozen=True, slots=True)
class TransportFailed:
    transaction: TransactionId


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    transaction: TransactionId


Event = (
    RequestReceived
    | ResponseReceived
    | CancelReceived
    | TransactionTimedOut
    | TransportFailed
    | TransactionTerminated
)
