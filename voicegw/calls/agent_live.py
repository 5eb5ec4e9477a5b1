"""What an agent's page shows of a live call: consent and recording state, transcript lines.

:class:`AgentLiveView` sits between the consent wrapper and the agent bridge
(``with_consent(AgentLiveView(bridge, ...), deps)``), so it sees each call the
bridge takes and can find the call's :class:`~voicegw.calls.consent_flow.ConsentFlow`
by its SIP call id. It

* listens to :meth:`ConsentedService.publish
  <voicegw.calls.consented.ConsentedService.publish>` and puts each call's
  latest consent state, and the recording state it implies, on the page of
  whichever agent has the caller now (after a transfer, the new one);
* runs a :class:`~voicegw.calls.transcription.CallTranscriber` on the
  caller's frames behind the flow's gate (a secure pause stops it within a
  frame) and pushes each line to the agent's page;
* carries the page's secure pause to the flow (:meth:`ConsentFlow.pause
  <voicegw.calls.consent_flow.ConsentFlow.pause>` / ``resume``), where it is
  enforced and audited.

Transcript text and numbers are never logged here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from voicegw.asr.base import TranscriptKind
from voicegw.asr.registry import AsrRegistry
from voicegw.calls.agent_bridge import AgentBridge
from voicegw.calls.agents import AgentCall, ConsentView
from voicegw.calls.consent_flow import ConsentFlow
from voicegw.calls.consented import ConsentedService, ConsentStateChanged
from voicegw.calls.sip_calls import InboundCall
from voicegw.calls.speech_policy import CallSpeech
from voicegw.calls.transcription import CallTranscriber
from voicegw.consent import State
from voicegw.media.clock import MediaClock
from voicegw.privacy.processing import RecordSink
from voicegw.store import tenants
from voicegw.tenant_settings import TenantSettings

__all__ = ["RECORDING_STATES", "AgentLiveView"]

log = logging.getLogger(__name__)

#: The caller's consent state -> what the page shows as the recording's state.
RECORDING_STATES: Final = {
    State.GRANTED: "recording",
    State.NOTICE_ONLY: "recording",
    State.NOT_REQUIRED: "recording",
    State.PAUSED: "paused",
}


class AgentLiveView:
    """A call handler around the agent bridge that feeds agents' pages (module docstring)."""

    def __init__(
        self,
        bridge: AgentBridge,
        *,
        clock: MediaClock,
        asr: AsrRegistry | None = None,
        on_record: RecordSink | None = None,
    ) -> None:
        self.bridge = bridge
        self.agents = bridge.agents
        self.clock = clock
        self.asr = asr
        self.on_record = on_record
        self.consented: ConsentedService | None = None
        #: The latest consent state per SIP call id (a page that gets the call later sees it).
        self._states: dict[str, State] = {}
        bridge.on_agent_call = self._show_current
        self.agents.on_secure_pause = self._secure_pause

    def attach(self, consented: ConsentedService) -> None:
        """Listen to ``consented`` (the wrapper this view runs inside)."""
        self.consented = consented
        consented.listeners.append(self._on_consent)

    async def __call__(self, call: InboundCall) -> None:
        flow = self.consented.flow(call.id) if self.consented is not None else None
        transcriber = await self._transcriber(call, flow) if flow is not None else None
        feeding: asyncio.Task[None] | None = None
        pushing: asyncio.Task[None] | None = None
        if transcriber is not None and transcriber.active:
            feeding = asyncio.create_task(transcriber.consume(call.media(self.clock).frames()))
            pushing = asyncio.create_task(self._push_lines(call.id, transcriber))
        try:
            await self.bridge(call)
        finally:
            self._states.pop(call.id, None)
            for task in (feeding, pushing):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if transcriber is not None:
                await transcriber.aclose()

    # --- consent and recording state -----------------------------------------------------

    def _on_consent(self, change: ConsentStateChanged) -> None:
        self._states[change.call_id] = change.state
        agent_call = self.bridge.agent_call_of(change.call_id)
        if agent_call is not None:
            self._show(change.call_id, agent_call)

    def _show_current(self, sip_call_id: str, agent_call: AgentCall) -> None:
        if sip_call_id in self._states:
            self._show(sip_call_id, agent_call)

    def _show(self, sip_call_id: str, agent_call: AgentCall) -> None:
        state = self._states[sip_call_id]
        flow = self.consented.flow(sip_call_id) if self.consented is not None else None
        machine = flow.caller_machine if flow is not None else None
        mode = machine.resolution.mode.value if machine is not None else None
        self.agents.show_consent(
            agent_call,
            ConsentView(state=state.value, mode=mode),
            recording=RECORDING_STATES.get(state, "off"),
            # The flow's state is the truth: a pause shows as set, a resume as cleared.
            secure_pause=state is State.PAUSED,
        )

    async def _secure_pause(self, agent_call: AgentCall, on: bool) -> None:
        """The page's secure pause, enforced and audited by the call's consent flow."""
        sip_call_id = self.bridge.sip_call_of(agent_call)
        flow = self.consented.flow(sip_call_id) if self.consented and sip_call_id else None
        if flow is None:
            return  # consent off for this call: nothing is recorded or transcribed to pause
        actor = f"agent:{agent_call.agent_id}"
        if on:
            await flow.pause(actor=actor)
        else:
            await flow.resume(actor=actor)

    # --- live transcript -------------------------------------------------------------------

    async def _transcriber(self, call: InboundCall, flow: ConsentFlow) -> CallTranscriber | None:
        if self.asr is None or self.consented is None:
            return None
        settings = await self._settings(call.offer.route.tenant_id)
        if settings is None:
            return None
        return CallTranscriber.for_call(
            self.asr,
            settings,
            CallSpeech(
                call_id=call.id,
                tenant=call.offer.route.tenant_id,
                language=settings.consent_prompt.language,
            ),
            parties=(flow.config.caller_party,),
            sinks_open=flow.gate.sinks_open,
            on_record=self.on_record or _ignore,
        )

    async def _settings(self, tenant_id: str) -> TenantSettings | None:
        assert self.consented is not None
        async with self.consented.deps.sessions() as session:
            tenant = await tenants.get_tenant(session, tenant_id)
            return None if tenant is None else tenants.tenant_settings(tenant)

    async def _push_lines(self, sip_call_id: str, transcriber: CallTranscriber) -> None:
        async for event in transcriber.subscribe():
            agent_call = self.bridge.agent_call_of(sip_call_id)
            if agent_call is not None:
                self.agents.push_transcript(
                    agent_call.call_id,
                    speaker=event.party,
                    text=event.text,
                    final=event.kind is TranscriptKind.FINAL,
                )


def _ignore(_record: object) -> None:
    """No processing-record sink configured."""
