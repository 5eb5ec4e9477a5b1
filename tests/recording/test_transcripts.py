"""Transcripts are written line by line: each line is in storage, sealed, while the call
goes on; a killed gateway leaves every sealed line readable; a failed write leaves the
transcript ``incomplete`` with the lines before it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tests.recording.conftest import CALL, TENANT, FailingAfter, notice_for, readable, row_of
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.recorder import recover_incomplete
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.recording.transcripts import (
    TRANSCRIPT_CHUNK_SIZE,
    TranscriptWriter,
    transcript_line,
)
from voicegw.store import recordings as store
from voicegw.store.models import AuditEvent

REPO = Path(__file__).resolve().parents[2]
LINES = [
    {"start": 0.4 + 2 * n, "end": 1.9 + 2 * n, "text": f"sentence number {n} was said", "n": n}
    for n in range(12)
]


def writer(
    sessions: async_sessionmaker[AsyncSession],
    storage: LocalFilesystemStorage,
    keyring: LocalKeyring,
    consent_id: int,
) -> TranscriptWriter:
    return TranscriptWriter(
        sessions,
        storage,
        keyring,
        tenant_id=TENANT,
        call_id=CALL,
        region="sg",
        party="caller",
        consent_record_id=consent_id,
        language="en",
        node="node-a",
    )


def sealed_prefix(lines: list[dict[str, object]]) -> bytes:
    """What a writer of ``lines`` has sealed: every whole chunk of their bytes."""
    data = b"".join(transcript_line(line) for line in lines)
    return data[: len(data) - len(data) % TRANSCRIPT_CHUNK_SIZE]


async def actions(sessions: async_sessionmaker[AsyncSession], row: store.Transcript) -> list[str]:
    async with sessions() as session:
        query = select(AuditEvent.action).where(AuditEvent.target == store.target_of(row))
        return list((await session.execute(query)).scalars())


async def test_each_line_is_sealed_in_storage_while_the_transcript_is_still_being_written(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    storage, keyring = LocalFilesystemStorage(tmp_path / "rec"), LocalKeyring(tmp_path / "keys")
    transcript = writer(sessions, storage, keyring, await notice_for(sessions))
    await transcript.open()
    for n, line in enumerate(LINES):
        await transcript.append(line)
        row = await row_of(sessions, transcript.transcript_id)
        assert row.state == "writing"
        # All but the unsealed rest of one chunk is in storage already.
        assert readable(storage, keyring, row) == sealed_prefix(LINES[: n + 1])
        assert len(sealed_prefix(LINES[: n + 1])) > len(sealed_prefix(LINES[:n])) or n == 0
    finished = await transcript.finish()

    assert (finished.state, finished.complete, finished.segments) == ("finished", True, 12)
    assert [json.loads(x) for x in readable(storage, keyring, finished).splitlines()] == LINES
    assert await actions(sessions, finished) == ["transcript.start", "transcript.finish"]
    on_disk = b"".join(p.read_bytes() for p in storage.root.rglob("*") if p.is_file())
    assert b"sentence number" not in on_disk


# The child writes LINES, says READY once they are appended, and waits to be killed.
CHILD = """
import asyncio, json, sys
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.storage import LocalFilesystemStorage
from voicegw.recording.transcripts import TranscriptWriter
from voicegw.store.db import create_engine, session_factory

URL, ROOT, KEYS, CONSENT, LINES = sys.argv[1:6]

async def main():
    sessions = session_factory(create_engine(URL))
    transcript = TranscriptWriter(sessions, LocalFilesystemStorage(ROOT), LocalKeyring(KEYS),
        tenant_id="acme", call_id="call-7", region="sg", party="caller",
        consent_record_id=int(CONSENT), transcript_id="tx-crash", node="node-a")
    await transcript.open()
    for line in json.loads(LINES):
        await transcript.append(line)
    print("READY", flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


async def test_a_killed_gateway_leaves_every_sealed_line_readable_and_recovery_marks_it(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    storage, keyring = LocalFilesystemStorage(tmp_path / "rec"), LocalKeyring(tmp_path / "keys")
    consent_id = await notice_for(sessions)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        engine.url.render_as_string(hide_password=False),
        str(storage.root),
        str(keyring.directory),
        str(consent_id),
        json.dumps(LINES),
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 60)  # type: ignore[union-attr]
    finally:
        child.kill()  # SIGKILL: no final chunk, no metadata
        _, err = await child.communicate()
    assert line == b"READY\n", err.decode()[-2000:]
    assert (await row_of(sessions, "tx-crash")).state == "writing"

    (recovered,) = await recover_incomplete(
        sessions, storage, keyring, tenant_id=TENANT, node="node-a"
    )
    assert (recovered.object_id, recovered.complete) == ("tx-crash", False)
    row = await row_of(sessions, "tx-crash")
    assert (row.state, row.complete) == ("incomplete", False)
    assert await actions(sessions, row) == ["transcript.start", "transcript.recovered"]

    text = readable(storage, keyring, row)
    assert text == sealed_prefix(LINES)
    # A reader keeps the lines that end in a newline: all but (at most) the last one.
    whole = [json.loads(x) for x in text.split(b"\n")[:-1]]
    assert whole == LINES[: len(whole)] and len(whole) >= len(LINES) - 1


async def append_until_full(transcript: TranscriptWriter, lines: list[dict[str, object]]) -> int:
    """Lines appended before the storage refused one (that one raised OSError)."""
    for written, line in enumerate(lines):
        try:
            await transcript.append(line)
        except OSError:
            return written
    return len(lines)


async def test_a_failed_write_leaves_the_transcript_incomplete_with_the_lines_before_it(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    keyring = LocalKeyring(tmp_path / "keys")
    storage = FailingAfter(tmp_path / "rec", budget=2_000)
    transcript = writer(sessions, storage, keyring, await notice_for(sessions))
    await transcript.open()
    lines = LINES * 5
    written = await append_until_full(transcript, lines)
    assert 0 < written < len(lines)
    with pytest.raises(RuntimeError, match="failed earlier"):
        await transcript.append(LINES[0])  # refused: the container's chunk order is broken
    row = await transcript.finish()

    assert (row.state, row.complete) == ("incomplete", False)
    assert await actions(sessions, row) == ["transcript.start", "transcript.incomplete"]
    # Every chunk sealed before the failure decrypts; the failed line may have left a part.
    text = readable(storage, keyring, row)
    assert text.startswith(sealed_prefix(lines[:written]))
    assert sealed_prefix(lines[: written + 1]).startswith(text)
    # The row counts the lines stored whole.
    assert row.segments == text.count(b"\n") and row.segments in (written - 1, written)
