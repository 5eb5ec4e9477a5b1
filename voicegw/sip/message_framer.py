"""Cut a TCP/TLS byte stream into SIP messages (RFC 3261 §18.3, RFC 5626 §3.5.1).

Sans-IO: ``feed(chunk)`` returns events; the transport writes, closes and
answers. Nothing raises out of ``feed``:

* :class:`MessageReceived` — one parsed message;
* :class:`MessageRejected` — one well-framed message that failed to parse; the
  stream is still in sync, so the transport may answer it
  (:func:`~voicegw.sip.message.build_error_response`) and carry on;
* :class:`KeepAlivePing` — a CRLFCRLF ping between messages: answer with CRLF;
* :class:`KeepAlivePong` — a lone CRLF pong. A pong is reported as soon as a
  chunk ends on it; if the next two bytes complete a ping after all (a ping
  split across segments), a :class:`KeepAlivePing` follows as well;
* :class:`FramingError` — framing is lost (no or bad Content-Length, limits
  exceeded): the framer stops, the transport should close the connection.
"""

from __future__ import annotations

import dataclasses
import re

from .errors import SipParseError
from .grammar import TOKEN
from .headers import canonical_name, parse_content_length
from .message import (
    DEFAULT_LIMITS,
    ENCODING,
    ERRORS,
    SipLimits,
    SipMessage,
    parse_message,
)

_PING = b"\r\n\r\n"
_HEADER_NAME_RE = re.compile(rf"({TOKEN})[ \t]*:")
_CRLF = b"\r\n"


@dataclasses.dataclass(frozen=True)
class MessageReceived:
    message: SipMessage


@dataclasses.dataclass(frozen=True)
class MessageRejected:
    error: SipParseError
    data: bytes


@dataclasses.dataclass(frozen=True)
class KeepAlivePing:
    pass


@dataclasses.dataclass(frozen=True)
class KeepAlivePong:
    pass


@dataclasses.dataclass(frozen=True)
class FramingError:
    error: SipParseError


def _content_length(head: str) -> int:
    """Content-Length from a header section, reading past lines that are malformed.

    Only the length decides framing: a message with a bad header but a good length
    is cut out whole and rejected on its own (MessageRejected), keeping the stream.
    """
    lengths: list[str] = []
    current: str | None = None
    for line in head.split("\r\n")[1:]:
        if line[:1] in (" ", "\t"):
            if current is not None:
                lengths[-1] += " " + line.strip(" \t")
            continue
        m = _HEADER_NAME_RE.match(line)
        name = canonical_name(m.group(1)) if m else None
        current = line if name == "Content-Length" else None
        if current is not None:
            lengths.append(line.split(":", 1)[1])
    if not lengths:
        raise SipParseError("missing Content-Length on a stream transport")
    if len(lengths) > 1:
        raise SipParseError("more than one Content-Length")
    return parse_content_length(lengths[0].strip(" \t"))


FramerEvent = MessageReceived | MessageRejected | KeepAlivePing | KeepAlivePong | FramingError


class StreamFramer:
    """Accumulates stream bytes and hands back complete messages."""

    def __init__(self, limits: SipLimits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buffer = bytearray()
        self._scanned = 0  # how far the search for the end of headers has got
        self._body_length: int | None = None  # known once the headers of a message are in
        self._head_end = 0
        self._pong_reported = False
        self._failed = False
        self._fail_event: FramingError | None = None

    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[FramerEvent]:
        if self._failed:
            return []
        self._buffer += data
        events: list[FramerEvent] = []
        while not self._failed:
            event = self._next_event()
            if event is None:
                break
            events.append(event)
        return events

    def _next_event(self) -> FramerEvent | None:
        if self._body_length is None:
            if self._buffer.startswith(b"\r"):
                return self._keepalive()
            if not self._buffer:
                return None
            self._pong_reported = False
            if not self._find_head():
                return None
            if self._fail_event is not None:
                return self._fail_event
        assert self._body_length is not None
        total = self._head_end + 4 + self._body_length
        if len(self._buffer) < total:
            return None
        data = bytes(self._buffer[:total])
        del self._buffer[:total]
        self._body_length = None
        self._scanned = 0
        try:
            return MessageReceived(parse_message(data, datagram=False, limits=self._limits))
        except SipParseError as exc:
            return MessageRejected(error=exc, data=data)

    def _keepalive(self) -> FramerEvent | None:
        """Keep-alives between messages; None while a CR might still begin one."""
        buf = self._buffer
        if buf.startswith(_PING):
            del buf[:4]
            self._pong_reported = False
            return KeepAlivePing()
        if not buf.startswith(_CRLF):
            if len(buf) == 1:
                return None
            # A CR not followed by LF: the start of a (malformed) message.
            return self._message_start()
        if self._pong_reported:
            # The second half of a ping split across chunks.
            del buf[:2]
            self._pong_reported = False
            return KeepAlivePing()
        if len(buf) == 3:
            return None  # CRLF CR: wait to see whether it is a ping
        del buf[:2]
        # When nothing follows yet, report the pong now and remember it: the next two
        # bytes may still complete a ping.
        self._pong_reported = not buf
        return KeepAlivePong()

    def _message_start(self) -> FramerEvent | None:
        self._pong_reported = False
        if not self._find_head():
            return None
        if self._fail_event is not None:
            return self._fail_event
        return self._next_event()

    def _find_head(self) -> bool:
        """Locate the end of the headers and read Content-Length; False if not there yet."""
        buf = self._buffer
        end = buf.find(_PING, max(0, self._scanned - 3))
        if end < 0:
            self._scanned = len(buf)
            newline = buf.rfind(_CRLF)
            last_line = len(buf) if newline < 0 else len(buf) - newline - 2
            if len(buf) > self._limits.max_message_size:
                self._fail(SipParseError("message too large", status=513))
            elif last_line > self._limits.max_line_length:
                self._fail(SipParseError("line too long", status=513))
            return self._failed
        try:
            length = _content_length(bytes(buf[:end]).decode(ENCODING, ERRORS))
            if end + 4 + length > self._limits.max_message_size:
                raise SipParseError("message too large", status=513)
        except SipParseError as exc:
            self._fail(exc)
            return True
        self._head_end = end
        self._body_length = length
        return True

    def _fail(self, error: SipParseError) -> None:
        self._failed = True
        self._fail_event = FramingError(error)
        self._buffer.clear()
