"""A gate in front of slow per-request work (database lookups), fair between sources.

At most ``concurrency`` requests do their lookups at once. When more wait, a
trusted source's request (one that authenticated recently) goes first; the
others take turns source by source, so a source with many requests waiting
delays nobody by more than one lookup per round. Without it the database's
own connection queue is first come first served: a flood's lookups, admitted
a moment before a phone's INVITE, would all run before it.

Waiters are bounded by whoever lets requests in (the service holds a
:class:`~voicegw.sip.security.PendingShares` slot for each).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator

from voicegw.sip.security import source_key


class FairGate:
    def __init__(self, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.concurrency = concurrency
        self._running = 0
        self._trusted: deque[asyncio.Future[None]] = deque()
        # One FIFO per source; the first source in the dict is served next, then goes last.
        self._by_source: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._trusted) + sum(len(queue) for queue in self._by_source.values())

    @contextlib.asynccontextmanager
    async def turn(self, host: str, trusted: bool = False) -> AsyncIterator[None]:
        """Wait for this request's turn, then hold one of the ``concurrency`` places."""
        await self._enter(host, trusted)
        try:
            yield
        finally:
            self._leave()

    async def _enter(self, host: str, trusted: bool) -> None:
        if self._running < self.concurrency and not self._trusted and not self._by_source:
            self._running += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if trusted:
            self._trusted.append(future)
        else:
            self._by_source.setdefault(source_key(host), deque()).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._leave()  # the place was handed over just as the waiter was cancelled
            else:
                self._forget(future, source_key(host), trusted)
            raise

    def _forget(self, future: asyncio.Future[None], key: str, trusted: bool) -> None:
        queue = self._trusted if trusted else self._by_source.get(key)
        if queue is not None and future in queue:
            queue.remove(future)
            if not trusted and not queue:
                del self._by_source[key]

    def _leave(self) -> None:
        # Hand the place straight to the next waiter; the count only drops when none is left.
        following = self._next()
        if following is None:
            self._running -= 1
        else:
            following.set_result(None)

    def _next(self) -> asyncio.Future[None] | None:
        while self._trusted:
            future = self._trusted.popleft()
            if not future.done():
                return future
        while self._by_source:
            key, queue = next(iter(self._by_source.items()))
            future = queue.popleft()
            del self._by_source[key]
            if queue:
                self._by_source[key] = queue  # its next request waits for the others' turns
            if not future.done():
                return future
        return None
