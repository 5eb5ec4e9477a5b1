"""``voicegw serve``: the gateway process (admin API now; SIP and media attach here)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.api.app import create_app
from voicegw.api.campaigns import CAMPAIGN_DIALER
from voicegw.api.context import LIVE_CALLS
from voicegw.asr.registry import default_asr_registry
from voicegw.bootstrap import bootstrap_if_empty, write_secret
from voicegw.calls.agent_bridge import (
    AgentBridge,
    AgentBridgeConfig,
    queue_definitions,
    trunk_dialer,
)
from voicegw.calls.agent_live import AgentLiveView
from voicegw.calls.agents import AgentDirectory
from voicegw.calls.bridge import BridgeService, store_contacts, store_tenant_users
from voicegw.calls.campaign_calls import CampaignDialer
from voicegw.calls.consented import ConsentedDeps, with_consent
from voicegw.calls.echo import EchoService
from voicegw.calls.prompts import PromptCache
from voicegw.calls.records import CallRecords
from voicegw.calls.routing import Router, Service
from voicegw.calls.sip_agents import SipAgentConfig, SipAgentPhones
from voicegw.calls.sip_calls import SipCalls, SipCallsConfig
from voicegw.calls.sip_metrics import SipServiceCollector
from voicegw.calls.sip_service import SipService, SipServiceConfig
from voicegw.calls.trunks import trunk_table
from voicegw.config import Settings
from voicegw.gc_tuning import tune_for_media
from voicegw.media.clock import MediaClock
from voicegw.media.ports import PortAllocator
from voicegw.media.webrtc import IceServer, WebRtcConfig
from voicegw.recording import retention
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.recorder import RecorderConfig, recover_incomplete
from voicegw.recording.storage import LocalFilesystemStorage, StorageBackend
from voicegw.sip.timers import TimerConfig
from voicegw.sip.transaction_layer import TransactionLayer
from voicegw.sip.transport import ListenAddresses
from voicegw.store import campaigns as store_campaigns
from voicegw.store import migrate, sip_accounts, tenants
from voicegw.store.db import create_engine, session_factory
from voicegw.store.processing import ProcessingRecordWriter
from voicegw.store.prompt_files import PromptLibrary
from voicegw.tts.registry import default_tts_registry

log = logging.getLogger("voicegw.server")

#: Days a finished campaign call's status stays readable (the scheduler polls it for minutes).
CAMPAIGN_CALL_DAYS = 30


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


def nonce_secret(key_dir: Path) -> bytes:
    """The digest-nonce key, created once (0600); nodes sharing it accept each other's nonces."""
    path = key_dir / "sip-nonce-secret"
    if not path.exists():
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_secret(path, secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def sip_service_config(settings: Settings) -> SipServiceConfig:
    sip = settings.sip
    host = sip.host
    return SipServiceConfig(
        domain=sip.domain,
        nonce_secret=nonce_secret(settings.key_dir),
        listen=ListenAddresses(
            udp=(host, sip.udp_port) if sip.udp_port else None,
            tcp=(host, sip.tcp_port) if sip.tcp_port else None,
            tls=(host, sip.tls_port) if sip.tls_port else None,
        ),
        digest_algorithms=sip.digest_algorithms,
    )


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    sip = settings.sip
    if sip.tls_port is None or sip.tls_certificate is None or sip.tls_private_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sip.tls_certificate, sip.tls_private_key)
    return context


def call_layer(
    settings: Settings,
    sip: SipService,
    sessions: async_sessionmaker[AsyncSession],
    agents: AgentDirectory,
    consent: ConsentedDeps,
    queue: AgentBridge | None = None,
) -> tuple[SipCalls, CallRecords]:
    """Calls on the SIP service: routing (no open relay) to the node's services.

    A tenant's own numbers go through the tenant's consent flow first (notice or
    question, the encrypted recording behind the gate), then to the agent queue.
    """

    async def number_owner(number: str) -> str | None:
        async with sessions() as session:
            found = await tenants.tenant_for_number(session, number)
            return None if found is None else found.tenant_id

    media = settings.media
    records = CallRecords(sessions, node=settings.node_name)
    # Consent first, then the live view (consent state, transcript, secure pause on the
    # agent's page), then the queue.
    live = AgentLiveView(queue if queue is not None else AgentBridge(agents))
    agent_calls = with_consent(live, consent)
    live.attach(agent_calls)
    bridge = BridgeService(store_contacts(sessions), records=records)
    calls = SipCalls(
        sip,
        Router(number_owner, echo_user=media.echo_user, tenant_user=store_tenant_users(sessions)),
        PortAllocator(settings.sip.host, media.rtp_port_min, media.rtp_port_max),
        {
            Service.ECHO: EchoService(),
            Service.BRIDGE_USER: bridge,
            Service.AGENT_QUEUE: agent_calls,
        },
        SipCallsConfig(
            media_address=media.advertised_address or settings.sip.host,
            max_call_seconds=media.max_call_seconds,
        ),
    )
    bridge.bind(calls)
    calls.on_call = records.track  # a Call row for every inbound call, whichever service
    calls.attach()
    return calls, records


async def recover_recordings(
    sessions: async_sessionmaker[AsyncSession],
    storage: StorageBackend,
    keys: LocalKeyring,
    *,
    node: str,
) -> int:
    """Settle what a crash of this ``node`` left ``writing`` (every tenant); run before any
    call is taken. Other nodes sharing the database may be recording: theirs are left."""
    async with sessions() as session:
        tenant_ids = [tenant.id for tenant in await tenants.list_tenants(session)]
    recovered = 0
    for tenant_id in tenant_ids:
        found = await recover_incomplete(sessions, storage, keys, tenant_id=tenant_id, node=node)
        recovered += len(found)
    log.info("recording.recovered", extra={"objects": recovered})
    return recovered


async def sweep_periodically(
    sessions: async_sessionmaker[AsyncSession], storage: StorageBackend, interval: float
) -> None:
    """Retention, expired SIP bindings and old campaign call statuses, every ``interval``
    seconds; errors never stop it."""
    while True:
        try:
            report = await retention.sweep(sessions, storage, now=datetime.now(UTC))
            async with sessions() as session, session.begin():
                purged = await sip_accounts.purge_expired(session, time.time())
                old = datetime.now(UTC) - timedelta(days=CAMPAIGN_CALL_DAYS)
                calls = await store_campaigns.purge_finished_calls(session, old)
            log.info(
                "retention.swept",
                extra={
                    "deleted": len(report.items),
                    "failed": len(report.failures),
                    "sip_bindings_purged": purged,
                    "campaign_calls_purged": calls,
                },
            )
        except Exception:
            log.exception("retention.sweep_failed")
        await asyncio.sleep(interval)


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
    storage = LocalFilesystemStorage(settings.recordings_root)
    keyring = LocalKeyring(settings.key_dir)
    await recover_recordings(sessions, storage, keyring, node=settings.node_name)
    async with sessions() as session, session.begin():
        settled = await store_campaigns.settle_unfinished_calls(session, settings.node_name)
    log.info("campaign.calls.settled", extra={"calls": settled})
    # The call layer's agent queues (skills, [[queues]] of the config), also the supervisor's.
    queue = AgentBridge(agents, AgentBridgeConfig(queues=queue_definitions(settings.queues)))
    app = create_app(
        sessions,
        settings.storage.data_dir,
        agents=agents,
        sip_domain=settings.sip.domain,
        recording_storage=storage,
        recording_keys=keyring,
        queues=queue,
    )
    runner = web.AppRunner(app, access_log=None)
    sip = SipService(
        sip_service_config(settings),
        sessions,
        layer=TransactionLayer(TimerConfig(settings.sip.t1, settings.sip.t2, settings.sip.t4)),
        tls_context=tls_context(settings),
        trunks=trunk_table(settings.trunks),
    )
    media_clock = MediaClock()
    media_clock.start()
    asr = default_asr_registry()
    processing = ProcessingRecordWriter(sessions)  # provider uses -> rows, off the media path
    consent = ConsentedDeps(
        sessions=sessions,
        storage=storage,
        keys=keyring,
        clock=media_clock,
        tts=default_tts_registry(),
        prompt_cache=PromptCache(),
        asr=asr,
        prompt_files=PromptLibrary(settings.storage.data_dir / "prompts"),
        on_record=processing.submit,
        recorder_config=RecorderConfig(node=settings.node_name),
    )
    calls, records = call_layer(settings, sip, sessions, agents, consent, queue=queue)
    queue.dial = trunk_dialer(calls, sip.trunks)  # agents' transfers to external numbers
    # Agents linked to a SIP login are rung at its registered phone.
    phones = SipAgentPhones(
        agents,
        sessions,
        SipAgentConfig(domain=settings.sip.domain),
        clock=media_clock,
        bridge=queue,
    )
    phones.bind(calls)
    app[LIVE_CALLS].attach(calls, bridge=queue)  # the API's secure pause finds live calls
    # Campaign calls: out through the campaign's trunk, then the same consent + queue path.
    campaign_dialer = CampaignDialer(calls, sip.trunks, sessions=sessions, node=settings.node_name)
    app[CAMPAIGN_DIALER] = campaign_dialer
    sip_metrics = SipServiceCollector(sip)
    sip_metrics.register()
    sweeper: asyncio.Task[None] | None = None
    try:
        processing.start()
        bound = await sip.start()
        await phones.start()
        await runner.setup()
        site = web.TCPSite(runner, settings.http.host, settings.http.port)
        await site.start()
        base = settings.http.public_url or f"http://{settings.http.host}:{settings.http.port}"
        tune_for_media()  # GC pauses were the p99 of packet latency under load
        log.info(
            "server.started",
            extra={
                "http": base,
                "node": settings.node_name,
                "sip_udp": str(bound.udp),
                "sip_tcp": str(bound.tcp),
                "sip_tls": str(bound.tls),
            },
        )
        sip_at = ", ".join(
            f"{name} {addr[0]}:{addr[1]}"
            for name, addr in (("UDP", bound.udp), ("TCP", bound.tcp), ("TLS", bound.tls))
            if addr is not None
        )
        print(
            f"voicegw {settings.node_name} is up.\n"
            f"  SIP: {sip_at} (domain {settings.sip.domain})\n"
            f"  Admin API: {base}/api/v1 (OpenAPI: {base}/api/v1/openapi.json)\n"
            f"  Admin page: {base}/admin/   Agent softphone: {base}/softphone"
        )
        if boot is not None:
            print(
                f"First start: created tenant '{boot.tenant_id}' and an operator token in "
                f"{boot.token_file} (mode 0600). Try:\n"
                f'  curl -H "Authorization: Bearer $(cat {boot.token_file})" '
                f"{base}/api/v1/tenants",
                flush=True,
            )
        if own_stop:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        sweeper = asyncio.create_task(
            sweep_periodically(sessions, storage, settings.retention.sweep_interval_seconds)
        )
        await stop.wait()
    finally:
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        log.info("server.stopping")
        await campaign_dialer.close()
        await phones.close()
        await calls.close()
        await records.wait_written()  # the last calls' end rows
        await processing.aclose()  # the last calls' processing records
        await sip.stop()
        sip_metrics.unregister()
        await runner.cleanup()
        await agents.close()
        await media_clock.stop()
        for provider in asr.list():
            await provider.aclose()  # the local engine's worker processes
        await engine.dispose()
