"""A campaign calls a real baresip through a loopback trunk; its recording mode is the campaign's.

The node is wired as ``voicegw serve`` wires it (:func:`voicegw.server.call_layer`:
consent flow, live view, agent queue) with a ``[[trunks]]`` entry whose
outbound side is baresip on 127.0.0.1, and the admin API with the campaign
dialer. The tenant records nothing by default (``off``); campaign
``renewals`` overrides that with ``opt_in``, campaign ``reminders`` with
``off``. baresip (``answermode=auto``) is the callee and presses keys with
``sndcode`` (RFC 4733 events), as in the inbound consent tests.

* ``renewals``: the callee is asked, presses 1; the stored consent record names
  the rule ``campaign_override`` and the encrypted recording exists and holds
  what baresip sent after consenting.
* ``reminders``: no prompt, no consent record, no recording; the callee waits
  for an agent (hold music) until it hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.e2e import consent_gateway
from tests.e2e.consent_gateway import (
    Pcm,
    as_float,
    best_match,
    requires_baresip,
    settings_for,
)
from tests.e2e.peers import DOMAIN, EVENT_TIMEOUT, RATE, SECRET, Baresip, Sessions
from voicegw.api.app import create_app
from voicegw.api.campaigns import CAMPAIGN_DIALER
from voicegw.calls.agent_bridge import AgentBridge
from voicegw.calls.agents import AgentDirectory
from voicegw.calls.campaign_calls import CampaignDialer
from voicegw.calls.consent_flow import ConsentOutcome
from voicegw.calls.consented import ConsentedDeps, ConsentedService, ConsentStateChanged
from voicegw.calls.prompts import PromptCache
from voicegw.calls.routing import Service
from voicegw.calls.sip_calls import SipCalls
from voicegw.calls.sip_service import SipService, SipServiceConfig
from voicegw.calls.trunks import trunk_table
from voicegw.config import Settings
from voicegw.consent import State
from voicegw.media.clock import MediaClock
from voicegw.media.webrtc import WebRtcConfig
from voicegw.recording.container import decrypt
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.metadata import open_stored, wrapped_key_of
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.server import call_layer
from voicegw.sip.transport import ListenAddresses
from voicegw.store import campaigns, tenants, tokens
from voicegw.store import recordings as store
from voicegw.tts.registry import TtsRegistry

pytestmark = [pytest.mark.e2e, requires_baresip]

# The consent tests' fixtures: SQLite store, media clock, eSpeak, the caller's WAV.
sessions = consent_gateway.sessions
clock = consent_gateway.clock
tts = consent_gateway.tts
prompt_audio = consent_gateway.prompt_audio
source_wav = consent_gateway.source_wav

TENANT = consent_gateway.TENANT
CALLEE = "+4915123456789"
OUR_NUMBER = consent_gateway.NUMBER
WINDOW = RATE // 10  # samples
TALK_PACKETS = 100  # 2 s of the callee's audio after consenting, before it hangs up


@dataclass
class Node:
    api: TestClient  # type: ignore[type-arg]
    token: str
    calls: SipCalls
    sessions: Sessions
    storage: LocalFilesystemStorage
    keyring: LocalKeyring
    states: asyncio.Queue[ConsentStateChanged] = field(default_factory=asyncio.Queue)
    outcomes: asyncio.Queue[tuple[str, ConsentOutcome]] = field(default_factory=asyncio.Queue)

    async def dial(self, campaign: str) -> dict[str, Any]:
        path = f"/api/v1/tenants/{TENANT}/campaigns/{campaign}/calls"
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.api.post(path, headers=headers, json={"to": CALLEE}) as resp:
            body: dict[str, Any] = await resp.json()
            assert resp.status == 202, body
            return body

    async def status(self, campaign: str, call_id: str) -> dict[str, Any]:
        path = f"/api/v1/tenants/{TENANT}/campaigns/{campaign}/calls/{call_id}"
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.api.get(path, headers=headers) as resp:
            body: dict[str, Any] = await resp.json()
            assert resp.status == 200, body
            return body

    async def settled(self, campaign: str, call_id: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EVENT_TIMEOUT
        while (body := await self.status(campaign, call_id))["state"] not in ("ended", "failed"):
            assert loop.time() < deadline, body
            await asyncio.sleep(0.05)
        return body

    async def state(self, call_id: str, *wanted: State) -> ConsentStateChanged:
        while True:
            change = await asyncio.wait_for(self.states.get(), EVENT_TIMEOUT)
            if change.call_id == call_id and change.state in wanted:
                return change

    def recorded_files(self) -> list[Path]:
        root = self.storage.root
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
async def callee(tmp_path: Path, source_wav: Path) -> AsyncIterator[Baresip]:
    phone = Baresip(tmp_path / "callee", source_wav, rtp_ports="43000-43999")
    await phone.start()
    # Reached straight through the trunk (no registration): the number is its user.
    await phone.command("uanew", f"<sip:{CALLEE}@127.0.0.1>;regint=0;answermode=auto")
    yield phone
    await phone.stop()


@pytest.fixture
async def node(
    sessions: Sessions,
    clock: MediaClock,
    tts: TtsRegistry,
    prompt_audio: Pcm,  # eSpeak initialised before any call
    callee: Baresip,
    tmp_path: Path,
) -> AsyncIterator[Node]:
    async with sessions.begin() as session:
        await tenants.create_tenant(
            session,
            actor="test",
            tenant_id=TENANT,
            name="Acme",
            settings=settings_for("off"),
        )
        await tenants.add_number(session, actor="test", tenant_id=TENANT, number=OUR_NUMBER)
        for campaign, mode in (("renewals", "opt_in"), ("reminders", "off")):
            await campaigns.create_campaign(
                session,
                actor="test",
                tenant_id=TENANT,
                campaign_id=campaign,
                name=campaign,
                trunk="loop",
                recording_mode=mode,
            )
        _, token = await tokens.create_token(session, role="tenant_admin", tenant_id=TENANT)
    # The node's configuration, as config.toml would give it.
    settings = Settings.model_validate(
        {
            "sip": {"domain": DOMAIN, "host": "127.0.0.1"},
            "media": {"rtp_port_min": 44000, "rtp_port_max": 44999},
            "trunks": [
                {
                    "name": "loop",
                    "tenant": TENANT,
                    "inbound_auth": "allow_list",
                    "sources": ["127.0.0.2/32"],
                    "outbound": {"host": "127.0.0.1", "port": callee.sip_port, "transport": "UDP"},
                }
            ],
        }
    )
    service = SipService(
        SipServiceConfig(
            domain=DOMAIN,
            nonce_secret=SECRET,
            listen=ListenAddresses(udp=("127.0.0.1", 0)),
            digest_algorithms=("MD5",),
        ),
        sessions,
        trunks=trunk_table(settings.trunks),
    )
    storage = LocalFilesystemStorage(tmp_path / "recordings")
    keyring = LocalKeyring(tmp_path / "keys")
    agents = AgentDirectory(WebRtcConfig())
    deps = ConsentedDeps(
        sessions=sessions,
        storage=storage,
        keys=keyring,
        clock=clock,
        tts=tts,
        prompt_cache=PromptCache(),
    )
    calls, records = call_layer(
        settings, service, sessions, agents, deps, queue=AgentBridge(agents)
    )
    app = create_app(sessions, tmp_path / "var", sip_domain=DOMAIN)
    dialer = CampaignDialer(calls, service.trunks, sessions=sessions)
    app[CAMPAIGN_DIALER] = dialer
    api = TestClient(TestServer(app, host="127.0.0.1"))
    node = Node(api, token, calls, sessions, storage, keyring)
    consented = calls.services[Service.AGENT_QUEUE]
    assert isinstance(consented, ConsentedService)
    consented.listeners.append(node.states.put_nowait)
    consented.on_outcome = lambda call_id, outcome: node.outcomes.put_nowait((call_id, outcome))
    await service.start()
    await api.start_server()
    try:
        yield node
    finally:
        await api.close()
        await dialer.close()
        await calls.close()
        await records.wait_written()
        await service.stop()
        with contextlib.suppress(Exception):
            await agents.close()


def received(node: Node, sip_call_id: str) -> int:
    leg = node.calls.calls.get(sip_call_id)
    stream = None if leg is None else leg.transport.leg.summary().received
    return 0 if stream is None else stream.packets_received


async def talk_then_hang_up(node: Node, sip_call_id: str, phone: Baresip) -> None:
    """Let the gateway take ``TALK_PACKETS`` more of the callee's packets, then it hangs up."""
    start = received(node, sip_call_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENT_TIMEOUT
    while received(node, sip_call_id) < start + TALK_PACKETS:
        assert loop.time() < deadline, "the callee's audio stopped"
        await asyncio.sleep(0.02)
    await phone.command("hangup")
    assert await phone.event("CALL_CLOSED") == "CALL_CLOSED"


@pytest.mark.timeout(90)
async def test_a_campaigns_opt_in_overrides_the_tenants_off_and_the_callee_is_asked(
    node: Node, callee: Baresip
) -> None:
    placed = await node.dial("renewals")
    assert await callee.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    answered = await node.status("renewals", placed["id"])
    sip_call_id = answered["sip_call_id"]
    assert answered["state"] == "answered" and sip_call_id

    await node.state(sip_call_id, State.AWAITING_ANSWER)
    await callee.command("sndcode", "1")
    assert (await node.state(sip_call_id, State.GRANTED, State.DECLINED)).state is State.GRANTED
    await talk_then_hang_up(node, sip_call_id, callee)

    call_id, outcome = await asyncio.wait_for(node.outcomes.get(), EVENT_TIMEOUT)
    assert call_id == sip_call_id
    assert outcome.resolution.rule.value == "campaign_override"
    assert outcome.resolution.mode.value == "opt_in"
    settled = await node.settled("renewals", placed["id"])
    assert settled["state"] == "ended" and settled["failure"] is None

    async with node.sessions() as session:
        records = await store.list_consent_records(session, TENANT, sip_call_id)
        rows = await store.list_recordings(session, TENANT, call_id=sip_call_id)
    caller_record = next(r for r in records if r.party == "caller")
    assert caller_record.decision == "granted"
    assert caller_record.policy_rule == "campaign_override"
    assert caller_record.mode == "opt_in"
    (row,) = rows
    assert row.consent_record_id == caller_record.id
    with open_stored(node.storage, row) as handle:
        plaintext = decrypt(handle, node.keyring, wrapped_key=wrapped_key_of(row))
    caller = as_float(np.frombuffer(plaintext, dtype="<i2")[0::2])
    # The last second before the hang-up, in 100 ms windows, is what baresip sent (a window
    # the jitter buffer slipped may miss).
    tail = caller[-RATE - WINDOW : -WINDOW]
    assert float(np.abs(tail).mean()) > 0.02, "nothing of the callee was recorded"
    sent = callee.recording("enc")
    matches = [best_match(tail[k : k + WINDOW], sent)[0] for k in range(0, RATE, WINDOW)]
    assert sum(m > 0.9 for m in matches) >= 7, matches


@pytest.mark.timeout(90)
async def test_a_campaign_with_recording_off_asks_nothing_and_keeps_nothing(
    node: Node, callee: Baresip
) -> None:
    placed = await node.dial("reminders")
    assert await callee.event("CALL_ESTABLISHED", "CALL_CLOSED") == "CALL_ESTABLISHED"
    answered = await node.status("reminders", placed["id"])
    sip_call_id = answered["sip_call_id"]
    assert answered["state"] == "answered" and sip_call_id
    await talk_then_hang_up(node, sip_call_id, callee)
    settled = await node.settled("reminders", placed["id"])
    assert settled["state"] == "ended"

    assert node.outcomes.empty() and node.states.empty(), "a consent flow ran"
    async with node.sessions() as session:
        assert await store.list_consent_records(session, TENANT, sip_call_id) == []
        assert await store.list_recordings(session, TENANT, call_id=sip_call_id) == []
    assert node.recorded_files() == []
    # The callee heard hold music while queued for an agent: the call reached the queue.
    heard = callee.recording("dec")
    assert float(np.abs(heard).max()) > 0.01
