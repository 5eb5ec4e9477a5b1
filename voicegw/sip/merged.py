"""Merged requests (RFC 3261 §8.2.2.2): one request reaching us twice by different paths.

A forking proxy, or a carrier routing a call over two trunks at once, can deliver
the same out-of-dialog request twice: same From tag, Call-ID and CSeq, but a
different branch (so the transaction layer sees two transactions). Taken twice, an
INVITE becomes two calls for one caller. The UAS core answers the copy
``482 Loop Detected`` while the first one's transaction is still going on.

Sans-IO: whether a transaction is still going on is asked of the caller
(``alive``), so this holds no timers. Memory is bounded: the oldest entries go
first once ``capacity`` requests are being watched (by then their transactions
are long over, or a flood is under way and the transaction layer's own cap
applies).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from .message import SipRequest
from .transaction_events import TransactionId

__all__ = ["MergedRequests"]

#: Requests watched at once (each a few hundred bytes of key).
DEFAULT_CAPACITY: Final = 10_000

_Key = tuple[str, str, int, str]


class MergedRequests:
    """Tells a merged copy of an out-of-dialog request from a new one."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._seen: OrderedDict[_Key, TransactionId] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def is_merged(
        self,
        transaction: TransactionId,
        request: SipRequest,
        alive: Callable[[TransactionId], bool],
    ) -> bool:
        """True when ``request`` (new, as ``transaction``) copies one whose transaction
        is still alive; otherwise it is remembered as the original."""
        if request.to.tag is not None or request.method in ("ACK", "CANCEL"):
            return False  # in-dialog, or matched to its INVITE by the transaction layer
        key = (request.from_.tag or "", request.call_id, request.cseq.seq, request.cseq.method)
        earlier = self._seen.get(key)
        if earlier is not None and earlier != transaction and alive(earlier):
            return True
        self._seen[key] = transaction
        self._seen.move_to_end(key)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return False
