"""The agent softphone: its page and its signalling WebSocket (protocol v2).

The wire format is specified in docs/softphone-protocol.md. The agent's
bearer token travels in the first message (``hello``), not in the URL or a
header: browsers cannot set headers on a WebSocket, and URLs end up in proxy
and access logs. Until ``hello`` succeeds nothing else is accepted; a socket
that sends none within :data:`HELLO_TIMEOUT` seconds is told and closed.

Every problem is answered with an ``error`` message (``code``, ``message``,
``re`` echoing the request's ``id``); the socket stays open, except after a
failed ``hello`` and when a newer sign-in of the same agent takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from aiohttp import WSMsgType, web

from voicegw.api.context import SESSIONS
from voicegw.calls.agents import (
    AgentDirectory,
    AgentEvent,
    AgentSession,
    CallAction,
    CallOffered,
    CallStateChanged,
    PresenceChanged,
    SessionReplaced,
    SoftphoneError,
    TranscriptLine,
)
from voicegw.store import tenants, tokens

__all__ = ["AGENTS", "PROTOCOL_VERSION", "SOFTPHONE_PATHS", "WS_PATH", "setup_softphone"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION: Final = 2
#: Versions a page may speak: v2 only added messages and fields, so v1 pages still work.
ACCEPTED_VERSIONS: Final = frozenset({1, 2})
WS_PATH: Final = "/api/v1/softphone/ws"
STATIC: Final = Path(__file__).parent / "static"
PAGES: Final = MappingProxyType(
    {
        "/softphone": ("softphone.html", "text/html"),
        "/softphone/softphone.js": ("softphone.js", "text/javascript"),
        "/softphone/softphone.css": ("softphone.css", "text/css"),
    }
)
#: Served without an Authorization header: the page, and the socket (auth by ``hello``).
SOFTPHONE_PATHS: Final = frozenset({WS_PATH, *PAGES})
HELLO_TIMEOUT: Final = 10.0
MAX_MESSAGE: Final = 64 * 1024
#: Close code for a socket replaced by a newer sign-in (4000-4999: application use).
CLOSE_REPLACED: Final = 4001
CLOSE_AUTH: Final = 4003
CSP: Final = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

AGENTS: web.AppKey[AgentDirectory] = web.AppKey("agents", AgentDirectory)

#: Server -> page: event type -> message type.
EVENT_TYPES: Final[Mapping[type, str]] = MappingProxyType(
    {
        PresenceChanged: "presence.changed",
        CallOffered: "call.offered",
        CallStateChanged: "call.state",
        TranscriptLine: "transcript",
        SessionReplaced: "session.replaced",
    }
)

#: Page -> server: message type -> required fields and their JSON types.
FIELDS: Final[Mapping[str, tuple[tuple[str, type], ...]]] = MappingProxyType(
    {
        "hello": (("token", str),),
        "ping": (),
        "presence.set": (("presence", str),),
        "call.answer": (("call_id", str),),
        "call.decline": (("call_id", str),),
        "call.hangup": (("call_id", str),),
        "call.hold": (("call_id", str), ("on", bool)),
        "call.mute": (("call_id", str), ("on", bool)),
        "call.dtmf": (("call_id", str), ("digits", str)),
        "webrtc.offer": (("call_id", str), ("sdp", str)),
        "webrtc.ice": (("call_id", str), ("candidate", str)),
        "recording.secure_pause": (("call_id", str), ("on", bool)),
        "transfer.start": (
            ("call_id", str),
            ("mode", str),
            ("target_kind", str),
            ("target", str),
        ),
        "transfer.complete": (("call_id", str),),
        "transfer.cancel": (("call_id", str),),
    }
)


def _message(kind: str, **body: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": kind, **body}


def event_message(event: AgentEvent) -> dict[str, Any]:
    return _message(EVENT_TYPES[type(event)], **dataclasses.asdict(event))


def error_message(code: str, message: str, re: Any = None) -> dict[str, Any]:
    return _message("error", code=code, message=message, re=re)


class SocketOutbox:
    """Queues messages for one WebSocket; one writer task keeps their order."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        #: The version the page signed in with (its hello's ``v``); every reply carries it.
        self.version = PROTOCOL_VERSION
        self._close_code = CLOSE_REPLACED
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=256)
        self._writer = asyncio.get_running_loop().create_task(self._write())

    def send(self, message: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait({**message, "v": self.version})
        except asyncio.QueueFull:
            # A page that stopped reading: drop it rather than grow without bound.
            self.close()

    def deliver(self, event: AgentEvent) -> None:
        self.send(event_message(event))

    def close(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def _write(self) -> None:
        while (message := await self._queue.get()) is not None:
            if self._ws.closed:
                return
            with contextlib.suppress(ConnectionError):
                await self._ws.send_str(json.dumps(message))
        await self._ws.close(code=self._close_code)

    async def drain_and_close(self, code: int) -> None:
        """Send what is queued, then close the socket with ``code`` (bounded wait)."""
        self._close_code = code
        self.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.shield(self._writer)
        await self.finish()

    async def finish(self) -> None:
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer


Handler = Callable[[AgentDirectory, AgentSession, dict[str, Any]], Awaitable[dict[str, Any] | None]]


async def _presence(d: AgentDirectory, s: AgentSession, m: dict[str, Any]) -> None:
    d.set_presence(s, m["presence"])


def _action(action: CallAction) -> Handler:
    async def handle(d: AgentDirectory, s: AgentSession, m: dict[str, Any]) -> None:
        await d.act(s, m["call_id"], action)

    return handle


async def _hold(d: AgentDirectory, s: AgentSession, m: dict[str, Any]) -> None:
    await d.act(s, m["call_id"], CallAction.HOLD if m["on"] else CallAction.UNHOLD)


async def _mute(d: AgentDirectory, s: AgentSession, m: dict[str, Any]) -> None:
    await d.mute(s, m["call_id"], m["on"])


async def _dtmf(d: AgentDirectory, s: AgentSession, m: dict[str, Any]) -> None:
    await d.dtmf(s, m["call_id"], m["digits"])


async def _offer(d: AgentDirectory, s: AgentSession, m: dict[str, Any]) -> dict[str, Any]:
    sdp = await d.negotiate(s, m["call_id"], m["sdp"])
    return _message("webrtc.answer", call_id=m["call_id"], sdp=sdp)


async def _ice(d: AgentDirectory, s: AgentSession, m: dict[str, Any]) -> None:
    mid = m.get("sdp_mid")
    await d.add_candidate(s, m["call_id"], m["candidate"], mid if isinstance(mid, str) else None)


async def _secure_pause(d: AgentDirectory, s: AgentSession, m: dict[str, Any]) -> None:
    await d.secure_pause(s, m["call_id"], m["on"])


async def _transfer(d: AgentDirectory, s: AgentSession, m: dict[str, Any]) -> None:
    await d.transfer(s, m["call_id"], m["mode"], m["target_kind"], m["target"])


async def _transfer_complete(d: AgentDirectory, s: AgentSession, m: dict[str, Any]) -> None:
    await d.transfer_complete(s, m["call_id"])


async def _transfer_cancel(d: AgentDirectory, s: AgentSession, m: dict[str, Any]) -> None:
    await d.transfer_cancel(s, m["call_id"])


async def _ping(_d: AgentDirectory, _s: AgentSession, _m: dict[str, Any]) -> dict[str, Any]:
    return _message("pong")


HANDLERS: Final[Mapping[str, Handler]] = MappingProxyType(
    {
        "ping": _ping,
        "presence.set": _presence,
        "call.answer": _action(CallAction.ANSWER),
        "call.decline": _action(CallAction.DECLINE),
        "call.hangup": _action(CallAction.HANGUP),
        "call.hold": _hold,
        "call.mute": _mute,
        "call.dtmf": _dtmf,
        "webrtc.offer": _offer,
        "webrtc.ice": _ice,
        "recording.secure_pause": _secure_pause,
        "transfer.start": _transfer,
        "transfer.complete": _transfer_complete,
        "transfer.cancel": _transfer_cancel,
    }
)


def parse(raw: str) -> dict[str, Any]:
    """One page message, checked against :data:`FIELDS`; raises SoftphoneError."""
    try:
        message = json.loads(raw)
    except ValueError as exc:
        raise SoftphoneError("bad_json", "messages are JSON objects") from exc
    if not isinstance(message, dict):
        raise SoftphoneError("bad_json", "messages are JSON objects")
    if message.get("v") not in ACCEPTED_VERSIONS:
        raise SoftphoneError("unsupported_version", f"this server speaks v{PROTOCOL_VERSION}")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in FIELDS:
        raise SoftphoneError("unknown_type", f"unknown message type {str(kind)[:40]!r}")
    for name, expected in FIELDS[kind]:
        if not isinstance(message.get(name), expected):
            raise SoftphoneError("bad_field", f"{kind} needs {name} ({expected.__name__})")
    return message


async def _authenticate(request: web.Request, token: str) -> tuple[str, int, list[str]]:
    async with request.app[SESSIONS]() as db:
        who = await tokens.authenticate(db, token)
        if who is None or who.role != "agent" or who.agent_id is None or who.tenant_id is None:
            raise SoftphoneError("unauthorized", "an agent token is required")
        agent = await tenants.get_agent(db, who.tenant_id, who.agent_id)
    if agent is None or not agent.enabled:
        raise SoftphoneError("unauthorized", "the agent is unknown or disabled")
    return who.tenant_id, who.agent_id, list(agent.skills)


def _welcome(directory: AgentDirectory, session: AgentSession) -> dict[str, Any]:
    call = session.call
    return _message(
        "welcome",
        agent={"id": session.agent_id, "tenant_id": session.tenant_id},
        presence=session.presence,
        call=dataclasses.asdict(call.view()) if call is not None else None,
        ice_servers=[s.to_json() for s in directory.webrtc.ice_servers],
    )


async def _hello(
    request: web.Request, ws: web.WebSocketResponse, outbox: SocketOutbox
) -> AgentSession | None:
    """Wait for a valid hello; on failure tell the page and return None."""
    directory = request.app[AGENTS]
    try:
        async with asyncio.timeout(HELLO_TIMEOUT):
            msg = await ws.receive()
    except TimeoutError:
        outbox.send(error_message("hello_timeout", "send hello first"))
        return None
    if msg.type is not WSMsgType.TEXT:
        return None
    try:
        hello = parse(msg.data)
        if hello["type"] != "hello":
            raise SoftphoneError("not_signed_in", "the first message must be hello")
        outbox.version = hello["v"]
        tenant_id, agent_id, skills = await _authenticate(request, hello["token"])
    except SoftphoneError as exc:
        outbox.send(error_message(exc.code, exc.message))
        return None
    session = directory.sign_in(tenant_id, agent_id, outbox, skills)
    outbox.send(_welcome(directory, session))
    log.info("agent %s signed in to the softphone", agent_id)
    return session


async def softphone_socket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    outbox = SocketOutbox(ws)
    directory = request.app[AGENTS]
    session = await _hello(request, ws, outbox)
    if session is None:
        await outbox.drain_and_close(CLOSE_AUTH)
        return ws
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                outbox.send(error_message("bad_json", "text frames only"))
                continue
            ref = None
            try:
                message = parse(msg.data)
                ref = message.get("id")
                if message["type"] == "hello":
                    raise SoftphoneError("already_signed_in", "this socket is signed in")
                reply = await HANDLERS[message["type"]](directory, session, message)
            except SoftphoneError as exc:
                outbox.send(error_message(exc.code, exc.message, ref))
                continue
            if reply is not None:
                outbox.send({**reply, "re": ref})
    finally:
        directory.detach(session, outbox)
        await outbox.finish()
    return ws


def _page(filename: str, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    body = (STATIC / filename).read_bytes()

    async def serve(_request: web.Request) -> web.Response:
        return web.Response(
            body=body,
            content_type=content_type,
            charset="utf-8",
            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
        )

    return serve


def setup_softphone(app: web.Application, directory: AgentDirectory) -> None:
    """Add the softphone page and socket; the directory's calls end at shutdown."""
    app[AGENTS] = directory
    app.router.add_get(WS_PATH, softphone_socket)
    for path, (filename, content_type) in PAGES.items():
        app.router.add_get(path, _page(filename, content_type))

    async def shutdown(_app: web.Application) -> None:
        await directory.close()

    app.on_shutdown.append(shutdown)
