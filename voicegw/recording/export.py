"""Exporting and verifying stored recordings and transcripts: the API and the CLI call this.

An export is checked before its first byte leaves: the row's state, the key
(public-key mode cannot decrypt here), the header's authentication and the
stored ciphertext against the size and SHA-256 the recorder wrote. Only then
is it audited (:func:`audit_export`, committed by the caller) and read:
decrypted chunk by chunk, never whole in memory and never to disk. A recording
marked ``incomplete`` (crash-recovered) exports its readable prefix.

Verification (:func:`check_stored`) reports whether the stored bytes are what
the row says and whether the container authenticates. A recording marked
``incomplete`` is *expected* to end without its final chunk, possibly in a
chunk torn mid-write: its finished chunks are reported valid and the tail as
expected; the same damage on a ``complete`` one is a failure.

Everything here but :func:`audit_export` is blocking I/O: run it in a worker
thread.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, BinaryIO

from sqlalchemy.ext.asyncio import AsyncSession

from voicegw.recording.container import TAG_BYTES, ContainerReader, inspect, read_header
from voicegw.recording.errors import (
    ContainerError,
    KeyProviderError,
    KeyShreddedError,
    ObjectNotFoundError,
    RecordingError,
    TamperedError,
    TruncatedError,
    TruncatedOrTamperedError,
    UnknownKeyError,
    UnwrapNotPermittedError,
)
from voicegw.recording.keys import KeyUnwrapper
from voicegw.recording.metadata import (
    RECORDING_FORMAT,
    TRANSCRIPT_FORMAT,
    Verification,
    expected_tail,
    open_stored,
    verify_stored,
    wrapped_key_of,
)
from voicegw.recording.storage import StorageBackend
from voicegw.store import audit
from voicegw.store import recordings as store

__all__ = [
    "FORMATS",
    "REFUSALS",
    "STATE_REFUSALS",
    "CheckResult",
    "Export",
    "ExportRefused",
    "audit_export",
    "check_stored",
    "open_export",
    "plaintext_length",
    "preamble_of",
    "refusal",
    "wav_header",
]

SAMPLE_BYTES = 2  # RECORDING_FORMAT is signed 16-bit PCM
_WAV_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_MAX_WAV_DATA = 0xFFFFFFFF - (_WAV_HEADER.size - 8)  # RIFF sizes are 32-bit


# --- refusals ------------------------------------------------------------------------


class ExportRefused(Exception):
    """An object cannot be exported; ``problem`` names the underlying error type, if any."""

    def __init__(self, status: int, code: str, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.problem = problem


#: Why reading failed -> (status, code, message). First match wins: subclasses come first.
REFUSALS: tuple[tuple[type[RecordingError], int, str, str], ...] = (
    (
        UnwrapNotPermittedError,
        409,
        "public_key_mode",
        "this tenant's {kind}s are encrypted to the tenant's own public key; the gateway "
        "holds no private key and cannot decrypt them: fetch the ciphertext and decrypt "
        "it offline with the tenant's private key",
    ),
    (KeyShreddedError, 410, "key_shredded", "the key of this {kind} was shredded: it is gone"),
    (UnknownKeyError, 409, "key_unavailable", "the key this {kind} was encrypted with is unknown"),
    (KeyProviderError, 409, "key_unavailable", "the key of this {kind} cannot be unwrapped"),
    (ObjectNotFoundError, 409, "object_missing", "storage holds no bytes for this {kind}"),
    (
        TruncatedOrTamperedError,
        422,
        "damaged",
        "the stored {kind} is cut short or modified",
    ),
    (TruncatedError, 422, "truncated", "the stored {kind} is cut short"),
    (TamperedError, 422, "tampered", "the stored {kind} was modified"),
    (ContainerError, 422, "damaged", "the stored {kind} is not a readable container"),
)

#: Row states an export cannot start from -> (status, code, message).
STATE_REFUSALS: dict[store.ObjectState, tuple[int, str, str]] = {
    store.ObjectState.WRITING: (409, "in_progress", "the {kind} is still being written"),
    store.ObjectState.DELETING: (410, "deleted", "the {kind} is being deleted by retention"),
    store.ObjectState.DELETED: (410, "deleted", "the {kind} was deleted by retention"),
}

#: Stored format of each kind: an object in any other format is not exported by this code.
FORMATS: dict[store.ObjectKind, str] = {
    store.ObjectKind.RECORDING: RECORDING_FORMAT,
    store.ObjectKind.TRANSCRIPT: TRANSCRIPT_FORMAT,
}


def refusal(exc: RecordingError, kind: store.ObjectKind) -> ExportRefused:
    """The refusal for a recording-layer error (its message names no key or plaintext)."""
    problem = type(exc).__name__
    for error_type, status, code, message in REFUSALS:
        if isinstance(exc, error_type):
            detail = f" ({problem}: {exc})" if isinstance(exc, ContainerError) else f" ({problem})"
            return ExportRefused(status, code, message.format(kind=kind.value) + detail, problem)
    return ExportRefused(409, "unreadable", f"the {kind.value} cannot be read ({problem})", problem)


def _check_state(row: store.StoredObject) -> None:
    kind = store.kind_of(row)
    rule = STATE_REFUSALS.get(store.ObjectState(row.state))
    if rule is not None:
        status, code, message = rule
        raise ExportRefused(status, code, message.format(kind=kind.value))
    if row.format != FORMATS[kind]:
        raise ExportRefused(409, "unsupported_format", f"{kind.value} format {row.format!r}")


# --- export core (blocking: run in a worker thread) ------------------------------------


def _digest(handle: BinaryIO) -> tuple[int, str]:
    handle.seek(0)
    sha, size = hashlib.sha256(), 0
    while block := handle.read(1 << 20):
        sha.update(block)
        size += len(block)
    return size, sha.hexdigest()


def plaintext_length(size: int, header_length: int, chunk_size: int) -> int:
    """Plaintext bytes of a complete container of ``size`` bytes (the final chunk may be empty)."""
    body = size - header_length
    chunks = max(1, math.ceil(body / (chunk_size + TAG_BYTES)))
    return body - chunks * TAG_BYTES


class Export:
    """A checked, decrypting reader over one stored object; :meth:`close` when done."""

    def __init__(
        self, handle: BinaryIO, reader: ContainerReader, plaintext_bytes: int, complete: bool
    ) -> None:
        self._handle = handle
        self._reader = reader
        self.plaintext_bytes = plaintext_bytes
        #: False: an incomplete (crash-recovered) object; its readable prefix is exported.
        self.complete = complete

    def __repr__(self) -> str:
        return f"Export(plaintext_bytes={self.plaintext_bytes}, complete={self.complete})"

    def chunks(self) -> Generator[bytes]:
        """Authenticated plaintext blocks totalling :attr:`plaintext_bytes`; raises on damage."""
        remaining = self.plaintext_bytes
        for chunk in self._reader.chunks():
            if len(chunk.plaintext) > remaining:
                raise TamperedError(
                    "more plaintext than the stored size implies", chunk=chunk.index
                )
            remaining -= len(chunk.plaintext)
            if chunk.plaintext:
                yield chunk.plaintext
            # An incomplete object has no final chunk: stop at the last readable byte.
            if remaining == 0 and not self.complete:
                return
        if remaining:
            raise TruncatedError("file ends before the stored size implies", chunk=None)

    def close(self) -> None:
        self._handle.close()


def open_export(storage: StorageBackend, keys: KeyUnwrapper, row: store.StoredObject) -> Export:
    """Check an object and open it for decryption (blocking I/O); raises ExportRefused."""
    _check_state(row)
    kind = store.kind_of(row)
    try:
        handle = open_stored(storage, row)
    except RecordingError as exc:
        raise refusal(exc, kind) from None
    try:
        wrapped = wrapped_key_of(row)
        reader = ContainerReader(handle, keys, wrapped_key=wrapped)
        size, sha = _digest(handle)
        complete = row.state == store.ObjectState.FINISHED.value
        if (size, sha) != (row.size_bytes, row.ciphertext_sha256) or not complete:
            # Name the damage (a digest mismatch alone says nothing about what changed);
            # an incomplete object needs the scan anyway for its readable length.
            handle.seek(0)
            seen = inspect(handle, keys, wrapped_key=wrapped)
            # The one rule verify applies too: only an incomplete object's tail is excused.
            if seen.problem is not None and expected_tail(row, seen.problem) is None:
                raise seen.problem
            if (size, sha) != (row.size_bytes, row.ciphertext_sha256):
                raise ExportRefused(
                    422,
                    "metadata_mismatch",
                    f"the stored {kind.value} authenticates but differs from the size and "
                    "SHA-256 recorded when it was written",
                )
            length = seen.plaintext_bytes
        else:
            length = plaintext_length(size, reader.header.length, reader.header.chunk_size)
        handle.seek(reader.header.length)
    except RecordingError as exc:
        handle.close()
        raise refusal(exc, kind) from None
    except BaseException:
        handle.close()
        raise
    return Export(handle, reader, length, complete)


def wav_header(channels: int, sample_rate: int, data_bytes: int) -> bytes:
    """A 44-byte PCM WAV header for ``data_bytes`` of signed 16-bit interleaved samples."""
    if data_bytes > _MAX_WAV_DATA:
        raise ExportRefused(422, "too_long", "recording exceeds the 4 GiB WAV size limit")
    block = channels * SAMPLE_BYTES
    return _WAV_HEADER.pack(
        b"RIFF",
        _WAV_HEADER.size - 8 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        channels,
        sample_rate,
        sample_rate * block,
        block,
        SAMPLE_BYTES * 8,
        b"data",
        data_bytes,
    )


def preamble_of(row: store.StoredObject, export: Export) -> tuple[bytes, str]:
    """What precedes the plaintext, and the content type of the whole."""
    if isinstance(row, store.Recording):
        return wav_header(row.channels, row.sample_rate, export.plaintext_bytes), "audio/wav"
    return b"", "application/x-ndjson"


@dataclass(frozen=True)
class CheckResult:
    """An integrity check of one stored object, as the API and CLI report it."""

    ok: bool
    matches_metadata: bool
    authenticates: bool | None  # None: public-key mode, the gateway cannot decrypt
    complete: bool | None
    chunks: int | None  # chunks stored (from the header's chunk size); None: unreadable header
    problem: str | None
    readable_chunks: int | None = None  # chunks that authenticate; None: not decrypted here
    #: How an ``incomplete`` recording ends, expected after a crash: "torn" (a chunk cut
    #: mid-write) or "unsealed" (no final chunk); None for anything else.
    tail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "matches_metadata": self.matches_metadata,
            "authenticates": self.authenticates,
            "complete": self.complete,
            "chunks": self.chunks,
            "readable_chunks": self.readable_chunks,
            "tail": self.tail,
            "problem": self.problem,
        }

    def describe(self) -> str:
        """One line for people (the CLI): what was found, and why it is or is not fine."""
        if not self.ok:
            return (
                f"FAILED verification: {self.problem or 'metadata mismatch'} "
                f"(matches metadata: {self.matches_metadata}, "
                f"authenticates: {self.authenticates})"
            )
        if self.authenticates is None:
            return "OK (matches its metadata; public-key mode: not decrypted here)"
        if self.complete:
            return f"OK ({self.chunks} chunks, complete)"
        return (
            f"OK ({self.readable_chunks} chunks readable, incomplete: the tail is "
            f"{self.tail}, as expected of a recording cut short by a crash)"
        )


def _stored_chunks(storage: StorageBackend, row: store.StoredObject) -> int | None:
    try:
        with open_stored(storage, row) as handle:
            header = read_header(handle)
            handle.seek(0, 2)
            body = handle.tell() - header.length
    except RecordingError:
        return None
    return math.ceil(body / (header.chunk_size + TAG_BYTES)) if body > 0 else 0


def check_stored(
    storage: StorageBackend, keys: KeyUnwrapper, row: store.StoredObject
) -> CheckResult:
    """Verify an object against its row and its authentication (blocking I/O).

    An ``incomplete`` recording whose scan ends in a truncation passes when its
    bytes match the row (recovery stored their size and hash): its finished
    chunks authenticate and the tail is reported, not failed.
    """
    seen: Verification = verify_stored(storage, row, keys)
    if seen.problem == UnwrapNotPermittedError.__name__:
        # Public-key mode: only the digest against the row can be checked here.
        seen = verify_stored(storage, row, None)
    ok = seen.matches_metadata and seen.authenticates is not False and seen.problem is None
    return CheckResult(
        ok=ok,
        matches_metadata=seen.matches_metadata,
        authenticates=seen.authenticates,
        complete=seen.complete,
        chunks=_stored_chunks(storage, row),
        problem=seen.problem,
        readable_chunks=seen.readable_chunks,
        tail=seen.tail,
    )


async def audit_export(
    session: AsyncSession,
    *,
    actor: str,
    row: store.StoredObject,
    export: Export,
    via: str | None = None,
) -> None:
    """The audit event of an export, appended before its first byte is handed out."""
    details: dict[str, Any] = {
        "plaintext_bytes": export.plaintext_bytes,
        "complete": export.complete,
        "ciphertext_sha256": row.ciphertext_sha256,
    }
    if via is not None:
        details["via"] = via
    await audit.append(
        session,
        actor=actor,
        tenant_id=row.tenant_id,
        action=f"{store.kind_of(row).value}.export",
        target=store.target_of(row),
        details=details,
    )
