"""Where the admin API finds a live call of this node: its SIP leg, consent flow and agent.

A call is known by two ids. The gateway's call id (``call-N``, given to each
inbound SIP call) is the call's own id everywhere the call is stored (consent
records, recordings, transcripts, the supervisor view's queue); an agent call
id is what the supervisor view's ``calls`` and the agent's softphone show once
the caller has an agent. :meth:`LiveCallIndex.find` takes either and returns
one :class:`LiveCall`, or None when the tenant has no such call in progress
here: unknown, ended and another tenant's calls look the same, so nothing
about other tenants can be learnt from the answer.

The call layer is built after the admin app (``voicegw serve`` creates the app,
then the SIP call layer around the same agent directory), so the index starts
empty and :meth:`LiveCallIndex.attach` binds it once the call layer exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from voicegw.calls.agent_bridge import AgentBridge
from voicegw.calls.agents import AgentCall, AgentDirectory, CallState
from voicegw.calls.consent_flow import ConsentFlow
from voicegw.calls.consented import ConsentedService
from voicegw.calls.sip_calls import InboundCall, SipCalls

__all__ = ["LiveCall", "LiveCallIndex"]


@dataclass(frozen=True)
class LiveCall:
    """One caller's call in progress, as far as this node knows it."""

    tenant_id: str
    #: The gateway's call id (None only for an agent call whose caller is not in a bridge).
    call_id: str | None
    #: The call's consent flow; None when nothing of it is recorded (mode ``off``).
    flow: ConsentFlow | None
    #: The agent call the caller has now (ringing or connected), if any.
    agent_call: AgentCall | None


class LiveCallIndex:
    """Looks up live calls across the call layer's registries (module docstring)."""

    def __init__(self, agents: AgentDirectory | None = None) -> None:
        self.agents = agents
        self.calls: SipCalls | None = None
        self.consented: ConsentedService | None = None
        self.bridge: AgentBridge | None = None

    def attach(self, calls: SipCalls, *, bridge: AgentBridge | None = None) -> None:
        """Bind the node's call layer. The consent layer is whichever of ``calls``' services
        is one (every service of a node that records goes through the same wrapper)."""
        self.calls = calls
        self.bridge = bridge
        self.consented = next(
            (s for s in calls.services.values() if isinstance(s, ConsentedService)), None
        )

    # --- lookups ------------------------------------------------------------------------

    def find(self, tenant_id: str, call_id: str) -> LiveCall | None:
        """The tenant's live call with gateway call id or agent call id ``call_id``."""
        agent_call = self._agent_call(tenant_id, call_id)
        if agent_call is not None:
            gateway_call_id = (
                self.bridge.sip_call_of(agent_call) if self.bridge is not None else None
            )
            return LiveCall(
                tenant_id, gateway_call_id, self._flow(tenant_id, gateway_call_id), agent_call
            )
        flow = self._flow(tenant_id, call_id)
        leg = self._leg(tenant_id, call_id)
        if flow is None and leg is None:
            return None
        agent_call = self.bridge.agent_call_of(call_id) if self.bridge is not None else None
        return LiveCall(tenant_id, call_id, flow, agent_call)

    def live(self, tenant_id: str) -> Iterator[LiveCall]:
        """The tenant's inbound calls in progress (each once, by gateway call id)."""
        ids: dict[str, None] = {}
        if self.calls is not None:
            ids.update((leg.id, None) for leg in self._legs(tenant_id))
        if self.consented is not None:
            ids.update(
                (call_id, None)
                for call_id, flow in self.consented.flows.items()
                if flow.call.tenant_id == tenant_id
            )
        for call_id in ids:
            found = self.find(tenant_id, call_id)
            if found is not None:
                yield found

    # --- the registries -----------------------------------------------------------------

    def _agent_call(self, tenant_id: str, call_id: str) -> AgentCall | None:
        call = self.agents.call(call_id) if self.agents is not None else None
        if call is None or call.tenant_id != tenant_id or call.state is CallState.ENDED:
            return None
        return call

    def _flow(self, tenant_id: str, call_id: str | None) -> ConsentFlow | None:
        if call_id is None or self.consented is None:
            return None
        flow = self.consented.flow(call_id)
        if flow is None or flow.call.tenant_id != tenant_id or flow.media.ended.is_set():
            return None  # a hung-up call's flow only seals its files: the call is over
        return flow

    def _legs(self, tenant_id: str) -> Iterator[InboundCall]:
        assert self.calls is not None
        for call_id in list(self.calls.calls):
            leg = self._leg(tenant_id, call_id)
            if leg is not None:
                yield leg

    def _leg(self, tenant_id: str, call_id: str) -> InboundCall | None:
        """The tenant's inbound SIP call in progress (an agent's outbound leg is not one)."""
        if self.calls is None:
            return None
        leg = self.calls.calls.get(call_id)
        if isinstance(leg, InboundCall) and leg.tenant_id == tenant_id and not leg.ended.is_set():
            return leg
        return None
