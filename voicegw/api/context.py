"""Typed keys for what the admin API keeps on the app and on each request."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.api.live_index import LiveCallIndex
from voicegw.calls.agent_bridge import WaitingCaller
from voicegw.recording.keys import KeyUnwrapper
from voicegw.recording.storage import StorageBackend
from voicegw.store.prompt_files import PromptLibrary
from voicegw.store.tokens import Principal

SESSIONS: web.AppKey[async_sessionmaker[AsyncSession]] = web.AppKey("sessions", async_sessionmaker)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
PROMPTS: web.AppKey[PromptLibrary] = web.AppKey("prompts", PromptLibrary)
SIP_DOMAIN: web.AppKey[str] = web.AppKey("sip_domain", str)


@dataclass(frozen=True)
class RecordingVault:
    """Where recordings are stored and what unwraps their keys (a public-key provider refuses)."""

    storage: StorageBackend
    keys: KeyUnwrapper


RECORDINGS: web.AppKey[RecordingVault] = web.AppKey("recordings", RecordingVault)


class QueueView(Protocol):
    """Read-only look at the callers waiting per tenant (the AgentBridge satisfies it)."""

    def waiting(self, tenant_id: str) -> Sequence[WaitingCaller]: ...


class NoQueues:
    """No call layer in this process (an API-only deployment): nobody is ever queued."""

    def waiting(self, tenant_id: str) -> Sequence[WaitingCaller]:
        return ()


# A Protocol is not a concrete class, so the key carries no runtime type.
QUEUES: web.AppKey[QueueView] = web.AppKey("queues")

#: The node's live calls (bound to the call layer by ``voicegw serve``; empty without one).
LIVE_CALLS: web.AppKey[LiveCallIndex] = web.AppKey("live_calls", LiveCallIndex)
