"""The aiohttp application: auth, errors, metrics, health and the admin routes."""

from __future__ import annotations

import time
from pathlib import Path

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.api.context import (
    LIVE_CALLS,
    PRINCIPAL,
    PROMPTS,
    QUEUES,
    RECORDINGS,
    SESSIONS,
    SIP_DOMAIN,
    NoQueues,
    QueueView,
    RecordingVault,
)
from voicegw.api.errors import ApiError, Handler, error_middleware
from voicegw.api.live_index import LiveCallIndex
from voicegw.api.openapi import OPENAPI_PATH, build_openapi
from voicegw.api.routes import ROUTES
from voicegw.api.softphone import SOFTPHONE_PATHS, setup_softphone
from voicegw.calls.agents import AgentDirectory
from voicegw.media.webrtc import WebRtcConfig
from voicegw.metrics import HTTP_LATENCY, HTTP_REQUESTS
from voicegw.recording.keys import KeyUnwrapper, LocalKeyring
from voicegw.recording.storage import LocalFilesystemStorage, StorageBackend
from voicegw.store import tokens
from voicegw.store.prompt_files import MAX_BYTES, PromptLibrary

PUBLIC_PATHS = frozenset({"/healthz", "/metrics", OPENAPI_PATH}) | SOFTPHONE_PATHS
#: Static pages carry no data; they call the API with the user's token.
PUBLIC_PREFIXES = ("/admin/",)
ADMIN_STATIC = Path(__file__).parent / "admin_static"
MAX_BODY = MAX_BYTES  # prompt uploads are the largest bodies


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret:
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>")
    async with request.app[SESSIONS]() as session:
        who = await tokens.authenticate(session, secret.strip())
    if who is None:
        raise ApiError(401, "unauthorized", "token is unknown or revoked")
    request[PRINCIPAL] = who
    return await handler(request)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    response = await handler(request)
    HTTP_REQUESTS.labels(request.method, route, str(response.status)).inc()
    HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)
    return response


async def healthz(request: web.Request) -> web.Response:
    try:
        async with request.app[SESSIONS]() as session:
            await session.execute(text("SELECT 1"))
    except Exception:
        return web.json_response({"status": "unhealthy", "database": "unreachable"}, status=503)
    return web.json_response({"status": "ok", "database": "ok"})


async def admin_page(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(ADMIN_STATIC / "admin.html")


def create_app(
    sessions: async_sessionmaker[AsyncSession],
    data_dir: Path = Path("var"),
    *,
    agents: AgentDirectory | None = None,
    sip_domain: str = "voicegw.local",
    recording_storage: StorageBackend | None = None,
    recording_keys: KeyUnwrapper | None = None,
    queues: QueueView | None = None,
) -> web.Application:
    # Order: metrics sees every final status; errors turn exceptions (incl. auth's) into JSON.
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware, auth_middleware],
        client_max_size=MAX_BODY,
    )
    app[SESSIONS] = sessions
    app[PROMPTS] = PromptLibrary(data_dir / "prompts")
    app[SIP_DOMAIN] = sip_domain
    # The supervisor view's queue (the call layer's AgentBridge); none without a call layer.
    app[QUEUES] = queues if queues is not None else NoQueues()
    # Defaults follow Settings: <data_dir>/recordings and <data_dir>/keys.
    app[RECORDINGS] = RecordingVault(
        recording_storage
        if recording_storage is not None
        else LocalFilesystemStorage(data_dir / "recordings"),
        recording_keys if recording_keys is not None else LocalKeyring(data_dir / "keys"),
    )
    document = build_openapi()

    async def openapi(_request: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", make_aiohttp_handler())
    app.router.add_get(OPENAPI_PATH, openapi)
    app.router.add_get("/admin/", admin_page)
    app.router.add_static("/admin/", ADMIN_STATIC, append_version=True)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    directory = agents if agents is not None else AgentDirectory(WebRtcConfig())
    setup_softphone(app, directory)
    # Bound to the SIP call layer later (``app[LIVE_CALLS].attach``): serve builds it after.
    app[LIVE_CALLS] = LiveCallIndex(directory)
    return app
