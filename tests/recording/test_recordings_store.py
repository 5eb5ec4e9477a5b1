"""Recording rows: consent evidence with its audit link, tenant scoping, processing records."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.consent import (
    CallContext,
    ConsentMachine,
    ConsentPolicy,
    DecisionMade,
    PartyRole,
    PromptFinished,
    PromptStarted,
    RecordingMode,
    Speech,
    resolve_mode,
)
from voicegw.consent.records import PromptRef
from voicegw.privacy.capabilities import DataType, ProviderCapabilities, Purpose
from voicegw.privacy.processing import Outcome, ProcessingContext, ProcessingRecord
from voicegw.recording.metadata import persist_consent_decision, processing_record_row
from voicegw.store import recordings as store
from voicegw.store import tenants
from voicegw.store.models import AuditEvent
from voicegw.tenant_settings import TenantSettings

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


async def two_tenants(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session, session.begin():
        for tenant_id in ("acme", "globex"):
            await tenants.create_tenant(
                session, actor="t", tenant_id=tenant_id, name=tenant_id, settings=TenantSettings()
            )


def spoken_yes_in_california() -> DecisionMade:
    policy = ConsentPolicy(
        default_mode=RecordingMode.NOTIFY,
        all_party_jurisdictions=frozenset({"US-CA"}),
        version="7",
    )
    prompt = PromptRef.for_content("This call may be recorded. Say yes to agree.", "v3")
    caller = ConsentMachine(
        "caller",
        PartyRole.CALLER,
        resolve_mode(policy, CallContext("+14155550100")),
        now=0.0,
        prompt=prompt,
    )
    caller.handle(PromptStarted(0.5))
    caller.handle(PromptFinished(4.0))
    (decided,) = [
        e for e in caller.handle(Speech(5.25, "yes please", 0.92)) if isinstance(e, DecisionMade)
    ]
    return decided


async def test_consent_record_keeps_what_was_asked_answered_and_which_rule_applied(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await two_tenants(sessions)
    decided = spoken_yes_in_california()
    async with sessions() as session, session.begin():
        row = await persist_consent_decision(
            session,
            actor="consent",
            tenant_id="acme",
            call_id="call-1",
            decision=decided.record,
            now=NOW,
        )
    async with sessions() as session:
        (stored,) = await store.list_consent_records(session, "acme", "call-1")
        assert (stored.party, stored.role, stored.decision, stored.method) == (
            "caller",
            "caller",
            "granted",
            "speech",
        )
        assert stored.evidence == {
            "reason": "answered_yes",
            "words": "yes please",
            "confidence": 0.92,
        }
        assert stored.prompt_sha256 == decided.record.prompt.sha256  # type: ignore[union-attr]
        assert stored.prompt_version == "v3"
        assert (stored.mode, stored.policy_rule, stored.jurisdiction, stored.policy_version) == (
            "opt_in",
            "jurisdiction",
            "US-CA",
            "7",
        )
        assert (stored.prompt_started_at, stored.decided_at) == (0.5, 5.25)

        event = await session.get(AuditEvent, stored.audit_seq)
        assert event is not None and event.hash == stored.audit_hash
        assert event.action == "consent.decision"
        assert event.target == f"tenant/acme/calls/call-1/consent/{row.id}"
        details = json.loads(event.details)
        assert details["decision"] == "granted" and details["jurisdiction"] == "US-CA"
        assert await store.audited_consent_record(session, "acme", row.id) is not None

        # another tenant asking for the same id sees nothing
        assert await store.get_consent_record(session, "globex", row.id) is None
        assert await store.audited_consent_record(session, "globex", row.id) is None
        assert await store.list_consent_records(session, "globex", "call-1") == []


async def test_recording_rows_are_scoped_by_tenant(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await two_tenants(sessions)
    async with sessions() as session, session.begin():
        consent = await persist_consent_decision(
            session,
            actor="consent",
            tenant_id="acme",
            call_id="call-1",
            decision=spoken_yes_in_california().record,
        )
        await store.add_recording(
            session,
            store.Recording(
                id="rec-1",
                tenant_id="acme",
                call_id="call-1",
                region="us",
                storage_key="us/acme/2026/11/rec-1.vgr",
                format="vgr1/pcm_s16le",
                channels=2,
                sample_rate=8000,
                key_id="acme",
                key_version=1,
                consent_record_id=consent.id,
                created_at=NOW,
                retain_until=NOW + timedelta(days=90),
                legal_hold=False,
                complete=False,
                state="writing",
                intervals=[],
                dropped_frames=0,
            ),
        )
    async with sessions() as session:
        assert await store.get_recording(session, "acme", "rec-1") is not None
        assert await store.get_recording(session, "globex", "rec-1") is None
        assert await store.list_recordings(session, "globex") == []
        assert [r.id for r in await store.list_recordings(session, "acme", call_id="call-1")] == [
            "rec-1"
        ]
        far_future = NOW + timedelta(days=1000)
        # still being written: not the sweeper's to delete, however old
        assert (
            await store.due_for_deletion(session, store.ObjectKind.RECORDING, "acme", far_future)
            == []
        )
    with pytest.raises(store.NotFoundError):
        async with sessions() as session, session.begin():
            await store.set_legal_hold(
                session,
                actor="legal",
                kind=store.ObjectKind.RECORDING,
                tenant_id="globex",
                object_id="rec-1",
                hold=True,
            )


async def test_processing_records_store_amounts_and_locations_never_content(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await two_tenants(sessions)
    provider = ProviderCapabilities(
        name="azure-speech",
        subprocessor_id="microsoft",
        processing_locations=frozenset({"westeurope", "northeurope"}),
        purposes=frozenset({Purpose.ASR}),
        data_types=frozenset({DataType.AUDIO}),
        languages=frozenset({"en"}),
    )
    record = ProcessingRecord.for_provider(
        ProcessingContext(call_id="call-1", tenant="acme"),
        provider,
        Purpose.ASR,
        started=1000.0,
        ended=1003.5,
        outcome=Outcome.OK,
        audio_seconds=3.2,
    )
    async with sessions() as session, session.begin():
        row = processing_record_row(record, to_wall=lambda t: datetime.fromtimestamp(t, UTC))
        await store.add_processing_record(session, "acme", row)
        with pytest.raises(ValueError, match="another tenant"):
            await store.add_processing_record(session, "globex", row)
    async with sessions() as session:
        (stored,) = await store.list_processing_records(session, "acme", "call-1")
        assert (stored.provider, stored.subprocessor, stored.purpose, stored.outcome) == (
            "azure-speech",
            "microsoft",
            "asr",
            "ok",
        )
        assert stored.locations == ["northeurope", "westeurope"]
        assert (stored.audio_seconds, stored.characters) == (3.2, None)
        assert store.as_utc(stored.ended_at) - store.as_utc(stored.started_at) == timedelta(
            seconds=3.5
        )
        assert await store.list_processing_records(session, "globex") == []
