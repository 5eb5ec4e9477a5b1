"""What an agent's page shows of a live call: consent and recording state, transcript lines.

:class:`AgentLiveView` sits between the consent wrapper and the agent bridge
(``with_consent(AgentLiveView(bridge, ...), deps)``), so it sees each call the
bridge takes and can find the call's :class:`~voicegw.calls.consent_flow.ConsentFlow`
by its SIP call id. It

* listens to :meth:`ConsentedService.publish
  <voicegw.calls.consented.ConsentedService.publish>` and puts each call's
  latest consent state, and the recording state it implies, on the page of
  whichever agent has the caller now (after a transfer, the new one);
* subscribes to the flow's :class:`~voicegw.calls.transcription.CallTranscriber`
  (both parties, behind the flow's gate: a secure pause stops it within a frame;
  the same lines are stored encrypted when the call ends) and pushes each line
  to the agent's page;
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
from voicegw.calls.agent_bridge import AgentBridge
from voicegw.calls.agents import AgentCall, ConsentView
from voicegw.calls.consented import ConsentedService, ConsentStateChanged
from voicegw.calls.sip_calls import InboundCall
from voicegw.calls.transcription import TranscriptSubscription
from voicegw.consent import State

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

    def __init__(self, bridge: AgentBridge) -> None:
        self.bridge = bridge
        self.agents = bridge.agents
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
        transcriber = flow.transcriber if flow is not None else None
        pushing: asyncio.Task[None] | None = None
        if transcriber is not None:
            pushing = asyncio.create_task(self._push_lines(call.id, transcriber.subscribe()))
        try:
            await self.bridge(call)
        finally:
            self._states.pop(call.id, None)
            if pushing is not None:
                pushing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pushing

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

    async def _push_lines(self, sip_call_id: str, lines: TranscriptSubscription) -> None:
        async for event in lines:
            agent_call = self.bridge.agent_call_of(sip_call_id)
            if agent_call is not None:
                self.agents.push_transcript(
                    agent_call.call_id,
                    speaker=event.party,
                    text=event.text,
                    final=event.kind is TranscriptKind.FINAL,
                )
