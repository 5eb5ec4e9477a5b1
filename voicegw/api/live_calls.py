"""Live calls through the admin API: consent and recording state, secure pause and resume.

A secure pause (a caller reading out a card number) goes through the call's
own :class:`~voicegw.calls.consent_flow.ConsentFlow`, exactly as the agent's
softphone button does: the flow's gate stops every sink of every party from
the next frame (recorder, speech-to-text, stored and live transcripts) and the
flow appends ``call.secure_pause`` / ``call.secure_resume`` to the audit chain
with the token as the actor. The answer carries the media-clock instant the
change took effect (``at``), the same clock the recording's suppressed
intervals are measured on.

Who may act: the operator, the tenant's admins, and an agent token of the
agent connected to the call. Supervisors watch (they may read the state) but
do not act. A call of another tenant, an unknown one and one that has ended
are the same 404; a call whose state does not allow the change is a 409 that
says why (nothing recorded, consent not granted, already paused, not paused).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from voicegw.api.admin import ADMINS, READERS, principal, scoped_tenant
from voicegw.api.context import LIVE_CALLS, SESSIONS
from voicegw.api.errors import ApiError, not_found
from voicegw.api.live_index import LiveCall
from voicegw.calls.agent_live import RECORDING_STATES
from voicegw.calls.agents import MEDIA_STATES
from voicegw.calls.consent_flow import ConsentFlow
from voicegw.consent import RecordingMode, State

__all__ = ["get_live_call", "list_live_calls", "secure_pause", "secure_resume"]

#: May pause and resume (an agent only on its own connected call).
CONTROLLERS = ADMINS | {"agent"}
#: May read a live call's state (an agent only its own call).
VIEWERS = READERS | {"agent"}

#: Caller states in which recording runs and a pause has something to stop.
_RECORDING = frozenset(state for state, shown in RECORDING_STATES.items() if shown == "recording")
#: Caller states in which nothing is being recorded, with the reason a pause is refused.
_REFUSED = {
    State.OFF: ("not_recording", "nothing of this call is recorded (recording mode off)"),
    State.PENDING: ("consent_not_granted", "consent has not been asked yet"),
    State.PROMPTING: ("consent_not_granted", "consent is being asked; nothing is recorded yet"),
    State.AWAITING_ANSWER: ("consent_not_granted", "the caller has not answered yet"),
    State.DECLINED: ("consent_not_granted", "the caller declined; nothing is recorded"),
    State.WITHDRAWN: ("consent_not_granted", "the caller withdrew consent; nothing is recorded"),
    State.ENDED: ("consent_not_granted", "consent ended with the call"),
}


def _caller_state(flow: ConsentFlow | None) -> State:
    if flow is None:
        return State.OFF
    machine = flow.caller_machine
    return machine.state if machine is not None else State.PENDING


def live_call_view(call: LiveCall) -> dict[str, Any]:
    """The call's consent and recording state, shaped like the softphone's call view."""
    flow = call.flow
    state = _caller_state(flow)
    machine = flow.caller_machine if flow is not None else None
    if machine is not None:
        mode: str | None = machine.resolution.mode.value
    else:
        mode = RecordingMode.OFF.value if flow is None else None  # not resolved yet
    agent_call = call.agent_call
    return {
        "call_id": call.call_id,
        "tenant_id": call.tenant_id,
        "agent_call_id": agent_call.call_id if agent_call is not None else None,
        "agent_id": agent_call.agent_id if agent_call is not None else None,
        "consent": {"state": state.value, "mode": mode},
        "recording": {
            "state": RECORDING_STATES.get(state, "off"),
            "secure_pause": state is State.PAUSED,
        },
    }


async def _live_call(request: web.Request, allowed: frozenset[str]) -> LiveCall:
    """The path's call, after the tenant scope (404), the role (403) and, for an agent
    token, that the agent is the one connected to this call (403)."""
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, allowed)
    call_id = request.match_info["call_id"]
    found = request.app[LIVE_CALLS].find(tenant.id, call_id)
    if found is None:
        raise not_found(f"live call {call_id}")
    who = principal(request)
    if who.role == "agent":
        agent_call = found.agent_call
        if (
            agent_call is None
            or agent_call.agent_id != who.agent_id
            or agent_call.state not in MEDIA_STATES
        ):
            raise ApiError(403, "forbidden", "an agent may act only on a call it is connected to")
    return found


def _recording_flow(call: LiveCall) -> ConsentFlow:
    if call.flow is None:
        raise ApiError(409, *_REFUSED[State.OFF])
    return call.flow


async def list_live_calls(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as session:
        tenant = await scoped_tenant(request, session, READERS)
    calls = request.app[LIVE_CALLS].live(tenant.id)
    return web.json_response({"calls": [live_call_view(c) for c in calls]})


async def get_live_call(request: web.Request) -> web.Response:
    return web.json_response(live_call_view(await _live_call(request, VIEWERS)))


async def secure_pause(request: web.Request) -> web.Response:
    call = await _live_call(request, CONTROLLERS)
    flow = _recording_flow(call)
    state = _caller_state(flow)
    if state is State.PAUSED:
        raise ApiError(409, "already_paused", "the recording is already paused")
    if state not in _RECORDING:
        raise ApiError(409, *_REFUSED.get(state, ("not_recording", f"consent is {state.value}")))
    # No await between the check and the flow's own state change: two requests racing
    # cannot both pause (the second sees ``paused``).
    at = await flow.pause(actor=principal(request).actor)
    return web.json_response({**live_call_view(call), "at": at})


async def secure_resume(request: web.Request) -> web.Response:
    call = await _live_call(request, CONTROLLERS)
    flow = _recording_flow(call)
    if _caller_state(flow) is not State.PAUSED:
        raise ApiError(409, "not_paused", "the recording is not paused")
    at = await flow.resume(actor=principal(request).actor)
    return web.json_response({**live_call_view(call), "at": at})
