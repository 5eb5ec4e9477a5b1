"""``voicegw serve``: the gateway process (admin API now; SIP and media attach here)."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from voicegw.api.app import create_app
from voicegw.bootstrap import bootstrap_if_empty
from voicegw.calls.agents import AgentDirectory
from voicegw.config import Settings
from voicegw.media.webrtc import IceServer, WebRtcConfig
from voicegw.store import migrate
from voicegw.store.db import create_engine, session_factory

log = logging.getLogger("voicegw.server")


def webrtc_config(settings: Settings) -> WebRtcConfig:
    section = settings.webrtc
    return WebRtcConfig(
        ice_servers=tuple(
            IceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in section.ice_servers
        ),
        host_addresses=section.host_addresses,
        codecs=section.codecs,
    )


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    own_stop = stop is None
    stop = stop or asyncio.Event()
    engine = create_engine(settings.database_url, echo=settings.database.echo)
    await migrate.upgrade(engine)
    sessions = session_factory(engine)
    boot = await bootstrap_if_empty(sessions, settings.storage.data_dir, settings.region)

    agents = AgentDirectory(
        webrtc_config(settings), wrap_up_seconds=settings.webrtc.wrap_up_seconds
    )
    app = create_app(sessions, settings.storage.data_dir, agents=agents)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http.host, settings.http.port)
    await site.start()
    base = settings.http.public_url or f"http://{settings.http.host}:{settings.http.port}"
    log.info("server.started", extra={"http": base, "node": settings.node_name})
    print(
        f"voicegw {settings.node_name} is up. Admin API: {base}/api/v1 "
        f"(OpenAPI: {base}/api/v1/openapi.json)"
    )
    if boot is not None:
        print(
            f"First start: created tenant '{boot.tenant_id}' and an operator token in "
            f"{boot.token_file} (mode 0600). Try:\n"
            f'  curl -H "Authorization: Bearer $(cat {boot.token_file})" {base}/api/v1/tenants',
            flush=True,
        )

    if own_stop:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("server.stopping")
        await runner.cleanup()
        await agents.close()
        await engine.dispose()
