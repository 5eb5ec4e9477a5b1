"""A call's transcript: each party's final lines are written as they come, under the
decision that allowed that party's audio; lines heard before the decision is stored
wait for it; a party without one gets nothing; one party's failure spares the other."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.recording.conftest import TENANT, FailingAfter, notice_for, readable, row_of
from voicegw.asr.base import TranscriptEvent, TranscriptKind
from voicegw.calls.call_transcript import CallTranscript, TranscriptTarget
from voicegw.calls.transcription import TranscriptSubscription
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.store import recordings as store

CALL = "call-7"
ORIGIN = 100.0  # media-clock time of the call's first frame


def said(
    party: str, text: str, at: float, kind: TranscriptKind = TranscriptKind.FINAL
) -> TranscriptEvent:
    return TranscriptEvent(kind, text, ORIGIN + at, ORIGIN + at + 1.0, 0.81234, "en", party)


class Call:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        storage: LocalFilesystemStorage,
        keys: LocalKeyring,
    ) -> None:
        self.sessions, self.storage, self.keys = sessions, storage, keys
        self.transcript = CallTranscript(
            TranscriptTarget(sessions, storage, keys, tenant_id=TENANT, call_id=CALL, region="sg")
        )
        self.transcript.origin = ORIGIN

    async def say(self, *events: TranscriptEvent) -> None:
        """The transcriber's events, each handled (written or waiting) before this returns."""
        subscription = TranscriptSubscription(maxsize=len(events) + 1)
        for event in events:
            subscription.offer(event)
        subscription.offer(None)
        await self.transcript.collect(subscription)

    async def hang_up(self) -> list[str]:
        return await self.transcript.finish()

    async def lines(self, transcript_id: str) -> list[dict[str, object]]:
        row = await row_of(self.sessions, transcript_id)
        text = readable(self.storage, self.keys, row)
        return [json.loads(x) for x in text.split(b"\n")[:-1]]

    async def stored(self) -> list[store.Transcript]:
        async with self.sessions() as session:
            return list(await store.list_transcripts(session, TENANT))


def local(tmp_path: Path) -> tuple[LocalFilesystemStorage, LocalKeyring]:
    return LocalFilesystemStorage(tmp_path / "rec"), LocalKeyring(tmp_path / "keys")


async def test_lines_are_written_during_the_call_under_the_partys_decision(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    call = Call(sessions, *local(tmp_path))
    consent = await notice_for(sessions, "caller")
    call.transcript.allow("caller", consent)
    await call.say(
        said("caller", "hello i need help with my order", 1.0),
        said("caller", "hello i", 2.0, TranscriptKind.PARTIAL),  # partials are not kept
        said("caller", "   ", 3.0),  # nor empty finals
        said("caller", "it never arrived and i was charged twice for it", 4.0),
    )
    (row,) = await call.stored()
    assert (row.state, row.consent_record_id) == ("writing", consent)  # the call goes on
    assert (await call.lines(row.id))[0]["text"] == "hello i need help with my order"

    assert await call.hang_up() == [row.id]
    assert await call.lines(row.id) == [
        {"start": 1.0, "end": 2.0, "text": "hello i need help with my order", "confidence": 0.812},
        {
            "start": 4.0,
            "end": 5.0,
            "text": "it never arrived and i was charged twice for it",
            "confidence": 0.812,
        },
    ]
    assert (await row_of(sessions, row.id)).state == "finished"


async def test_lines_heard_before_the_decision_is_stored_wait_for_it_in_order(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    call = Call(sessions, *local(tmp_path))
    await call.say(said("caller", "first", 1.0), said("caller", "second", 2.0))
    assert await call.stored() == []  # nothing to rest on yet: nothing written
    call.transcript.allow("caller", await notice_for(sessions, "caller"))
    for _ in range(500):  # written once the decision is in, not at hang-up
        if await call.stored():
            break
        await asyncio.sleep(0.02)
    (waiting,) = await call.stored()
    assert [line["text"] for line in await call.lines(waiting.id)] == ["first"]  # sealed so far
    await call.say(said("caller", "third", 3.0))

    (transcript_id,) = await call.hang_up()
    assert [line["text"] for line in await call.lines(transcript_id)] == [
        "first",
        "second",
        "third",
    ]


async def test_a_party_without_a_stored_decision_gets_nothing_written(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    call = Call(sessions, *local(tmp_path))
    call.transcript.allow("caller", await notice_for(sessions, "caller"))
    await call.say(said("agent", "the agent speaks", 1.0), said("caller", "the caller", 2.0))

    (transcript_id,) = await call.hang_up()
    assert (await row_of(sessions, transcript_id)).party == "caller"
    assert len(await call.stored()) == 1


async def test_one_partys_failed_storage_leaves_the_other_partys_transcript_whole(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    storage = FailingAfter(tmp_path / "rec", budget=None)
    call = Call(sessions, storage, LocalKeyring(tmp_path / "keys"))
    call.transcript.allow("caller", await notice_for(sessions, "caller"))
    call.transcript.allow("agent", await notice_for(sessions, "agent"))
    await call.say(said("agent", "how can i help", 0.5))
    storage.budget = 600  # the caller's transcript, created next, fills its disk
    for n in range(10):
        await call.say(said("caller", "a very long complaint " * 4 + str(n), 1.0 + n))
    await call.say(said("agent", "i understand", 30.0))

    ids = await call.hang_up()
    rows = {row.party: row for row in await call.stored()}
    assert set(ids) == {rows["caller"].id, rows["agent"].id}
    assert [line["text"] for line in await call.lines(rows["agent"].id)] == [
        "how can i help",
        "i understand",
    ]
    assert rows["agent"].state == "finished"
    assert (rows["caller"].state, rows["caller"].complete) == ("incomplete", False)
    caller_lines = await call.lines(rows["caller"].id)  # what was sealed before the disk filled
    assert 0 < len(caller_lines) < 10 and rows["caller"].segments == len(caller_lines)
