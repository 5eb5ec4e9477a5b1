"""The encrypted recording container (``.vgr``): AES-256-GCM in a STREAM construction.

Online authenticated encryption after Hoang, Reyhanitabar, Rogaway and Vizár,
"Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance"
(CRYPTO 2015), the same shape as Tink's AES-GCM-HKDF streaming AEAD: the
plaintext is cut into fixed-size chunks and chunk *i* is sealed with the nonce

    nonce_prefix (7 bytes) || i (u32, big-endian) || final flag (0x00 / 0x01)

so a chunk only authenticates at its own position, and only the last chunk
authenticates with the final flag. Truncation, reordering, duplication and
modification are therefore all detected. Each file has a fresh random data key,
wrapped by the tenant's key provider and stored in the header; a header MAC
keyed from the data key protects every header field.

The byte-level format is specified in ``docs/recording-format.md``.

Crash behaviour: the writer appends each sealed chunk with one write, and a
chunk is sealed as soon as ``chunk_size`` plaintext bytes are buffered, so a
killed process leaves every completed chunk decryptable and no final chunk;
:func:`recover` and :func:`inspect` read such a file and report
``complete=False``.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import os
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from voicegw.recording.errors import (
    ContainerError,
    HeaderFormatError,
    MissingWrappedKeyError,
    NotAContainerError,
    TamperedError,
    TruncatedError,
    TruncatedOrTamperedError,
    UnsupportedVersionError,
)
from voicegw.recording.keys import (
    DATA_KEY_BYTES,
    KeyUnwrapper,
    KeyWrapper,
    WrappedKey,
    new_data_key,
)

MAGIC = b"\x89VGR\r\n\x1a\n"  # PNG-style: high bit, CR LF, ^Z, LF catch text-mode mangling
FORMAT_VERSION = 1
SUITE_AES256GCM_HKDF_SHA256 = 1
FLAG_DETACHED_KEY = 0x01
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 7
HEADER_MAC_BYTES = 32
MIN_CHUNK_SIZE = 1
MAX_CHUNK_SIZE = 1 << 24
MAX_CHUNKS = 1 << 32
# ~1 s of two-channel 8 kHz 16-bit audio: bounds what a crash can lose.
DEFAULT_CHUNK_SIZE = 32 * 1024

_PAYLOAD_INFO = b"voicegw recording v1 payload key"
_MAC_INFO = b"voicegw recording v1 header mac key"
# magic, version, suite, flags, chunk size, nonce prefix, key id length
_FIXED = struct.Struct(">8sBBBI7sB")


class FsyncPolicy(enum.Enum):
    """When the writer forces data to stable storage.

    Every chunk reaches the OS as soon as it is sealed (survives a process
    kill); fsync additionally survives a power cut, at a latency cost.
    """

    NEVER = "never"
    ON_FINISH = "on_finish"
    EVERY_CHUNK = "every_chunk"


class ChunkSink(Protocol):
    """Where the writer puts ciphertext: an append-only byte sink."""

    def write(self, data: bytes) -> None: ...

    def sync(self) -> None: ...


class FileSink:
    """Adapts a binary file object to :class:`ChunkSink` (flush per write, fsync on sync)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()

    def sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())


# --- header ----------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """The container header. ``wrapped_key.blob`` is empty when the key is detached."""

    chunk_size: int
    nonce_prefix: bytes
    wrapped_key: WrappedKey
    detached: bool = False
    version: int = FORMAT_VERSION
    suite: int = SUITE_AES256GCM_HKDF_SHA256
    mac: bytes = field(default=b"", repr=False)

    def unsigned_bytes(self) -> bytes:
        """Every header byte the MAC covers (all but the MAC itself)."""
        key_id = self.wrapped_key.key_id.encode()
        blob = b"" if self.detached else self.wrapped_key.blob
        flags = FLAG_DETACHED_KEY if self.detached else 0
        return (
            _FIXED.pack(
                MAGIC,
                self.version,
                self.suite,
                flags,
                self.chunk_size,
                self.nonce_prefix,
                len(key_id),
            )
            + key_id
            + struct.pack(">IH", self.wrapped_key.version, len(blob))
            + blob
        )

    def __bytes__(self) -> bytes:
        return self.unsigned_bytes() + self.mac

    @property
    def length(self) -> int:
        """Header size in bytes; chunk 0 starts here."""
        return len(self.unsigned_bytes()) + HEADER_MAC_BYTES


def _read_exact(source: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes; fewer only at end of file."""
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        block = source.read(remaining)
        if not block:
            break
        parts.append(block)
        remaining -= len(block)
    return b"".join(parts)


def _need(source: BinaryIO, size: int, what: str) -> bytes:
    data = _read_exact(source, size)
    if len(data) != size:
        raise HeaderFormatError(f"header ends inside the {what} field")
    return data


def read_header(source: BinaryIO) -> Header:
    """Parse (but do not authenticate) the header at the current position of ``source``."""
    fixed = _read_exact(source, _FIXED.size)
    if fixed and len(fixed) < len(MAGIC) and MAGIC.startswith(fixed):
        raise HeaderFormatError("header ends inside the magic")
    if len(fixed) < len(MAGIC) or fixed[: len(MAGIC)] != MAGIC:
        raise NotAContainerError("not a voicegw recording: bad magic")
    if len(fixed) != _FIXED.size:
        raise HeaderFormatError("header ends inside the fixed fields")
    _, version, suite, flags, chunk_size, prefix, key_id_len = _FIXED.unpack(fixed)
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(f"container format version {version} is not supported")
    if suite != SUITE_AES256GCM_HKDF_SHA256:
        raise UnsupportedVersionError(f"cipher suite {suite} is not supported")
    if flags & ~FLAG_DETACHED_KEY:
        raise HeaderFormatError(f"unknown header flags 0x{flags:02x}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise HeaderFormatError(
            f"chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}"
        )
    if key_id_len == 0:
        raise HeaderFormatError("key id is empty")
    try:
        key_id = _need(source, key_id_len, "key id").decode()
    except UnicodeDecodeError:
        raise HeaderFormatError("key id is not UTF-8") from None
    key_version, blob_len = struct.unpack(">IH", _need(source, 6, "key version"))
    detached = bool(flags & FLAG_DETACHED_KEY)
    if detached and blob_len:
        raise HeaderFormatError("detached-key header carries a wrapped key")
    if not detached and not blob_len:
        raise HeaderFormatError("header carries no wrapped key")
    blob = _need(source, blob_len, "wrapped key")
    mac = _need(source, HEADER_MAC_BYTES, "header MAC")
    return Header(
        chunk_size=chunk_size,
        nonce_prefix=prefix,
        wrapped_key=WrappedKey(key_id, key_version, blob),
        detached=detached,
        version=version,
        suite=suite,
        mac=mac,
    )


# --- key schedule ----------------------------------------------------------


def _derive(data_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(data_key)


@dataclass(frozen=True)
class _Keys:
    payload: AESGCM = field(repr=False)
    mac_key: bytes = field(repr=False)

    @classmethod
    def from_data_key(cls, data_key: bytes) -> _Keys:
        if len(data_key) != DATA_KEY_BYTES:
            raise ValueError(f"data key must be {DATA_KEY_BYTES} bytes")
        return cls(AESGCM(_derive(data_key, _PAYLOAD_INFO)), _derive(data_key, _MAC_INFO))

    def header_mac(self, unsigned: bytes) -> bytes:
        return hmac.new(self.mac_key, unsigned, hashlib.sha256).digest()


def chunk_nonce(prefix: bytes, index: int, final: bool) -> bytes:
    """The 12-byte GCM nonce of chunk ``index``."""
    return prefix + struct.pack(">IB", index, 1 if final else 0)


# --- writer ----------------------------------------------------------------


@dataclass(frozen=True)
class WriteSummary:
    """What a finished writer produced."""

    chunks: int
    plaintext_bytes: int
    ciphertext_bytes: int


class ContainerWriter:
    """Encrypts a plaintext stream chunk by chunk into a :class:`ChunkSink`.

    Holds at most ``chunk_size`` bytes of plaintext in memory and writes only
    the header and sealed chunks. The header is written at construction, so
    even a crash before the first chunk leaves a recognisable, incomplete file.
    """

    def __init__(
        self,
        sink: ChunkSink,
        *,
        data_key: bytes,
        wrapped_key: WrappedKey,
        nonce_prefix: bytes,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        fsync: FsyncPolicy = FsyncPolicy.ON_FINISH,
        detach_wrapped_key: bool = False,
    ) -> None:
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size must be in {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        if len(nonce_prefix) != NONCE_PREFIX_BYTES:
            raise ValueError(f"nonce prefix must be {NONCE_PREFIX_BYTES} bytes")
        self._sink = sink
        self._keys = _Keys.from_data_key(data_key)
        self._prefix = nonce_prefix
        self._chunk_size = chunk_size
        self._fsync = fsync
        self._buffer = bytearray()
        self._index = 0
        self._plaintext_bytes = 0
        self._finished = False
        self.wrapped_key = wrapped_key
        unsigned = Header(chunk_size, nonce_prefix, wrapped_key, detach_wrapped_key)
        self.header = Header(
            chunk_size,
            nonce_prefix,
            wrapped_key,
            detach_wrapped_key,
            mac=self._keys.header_mac(unsigned.unsigned_bytes()),
        )
        self._ciphertext_bytes = self.header.length
        sink.write(bytes(self.header))
        if fsync is FsyncPolicy.EVERY_CHUNK:
            sink.sync()

    @classmethod
    def create(
        cls,
        sink: ChunkSink,
        keys: KeyWrapper,
        tenant: str,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        fsync: FsyncPolicy = FsyncPolicy.ON_FINISH,
        detach_wrapped_key: bool = False,
    ) -> ContainerWriter:
        """A writer with a fresh random data key and nonce prefix, wrapped by ``keys``."""
        data_key = new_data_key()
        return cls(
            sink,
            data_key=data_key,
            wrapped_key=keys.wrap(tenant, data_key),
            nonce_prefix=secrets.token_bytes(NONCE_PREFIX_BYTES),
            chunk_size=chunk_size,
            fsync=fsync,
            detach_wrapped_key=detach_wrapped_key,
        )

    @property
    def chunks_written(self) -> int:
        return self._index

    def __repr__(self) -> str:
        return (
            f"ContainerWriter(key_id={self.wrapped_key.key_id!r}, "
            f"key_version={self.wrapped_key.version}, chunks={self._index})"
        )

    def _seal(self, plaintext: bytes, final: bool) -> None:
        if self._index >= MAX_CHUNKS:
            raise ContainerError("recording exceeds the 2^32 chunk limit", chunk=self._index)
        sealed = self._keys.payload.encrypt(
            chunk_nonce(self._prefix, self._index, final), plaintext, None
        )
        self._sink.write(sealed)
        self._ciphertext_bytes += len(sealed)
        self._index += 1
        if self._fsync is FsyncPolicy.EVERY_CHUNK:
            self._sink.sync()

    def write(self, data: bytes) -> None:
        """Append plaintext; seals and writes every chunk that becomes full."""
        if self._finished:
            raise ValueError("writer is finished")
        self._buffer += data
        self._plaintext_bytes += len(data)
        size = self._chunk_size
        # Seal as soon as a chunk is full (not when the next byte arrives), so
        # a crash loses at most the bytes of the chunk in progress.
        while len(self._buffer) >= size:
            self._seal(bytes(self._buffer[:size]), final=False)
            del self._buffer[:size]

    def finish(self) -> WriteSummary:
        """Seal the final chunk (possibly empty) and apply the fsync policy."""
        if self._finished:
            raise ValueError("writer is finished")
        self._seal(bytes(self._buffer), final=True)
        self._buffer.clear()
        self._finished = True
        if self._fsync is not FsyncPolicy.NEVER:
            self._sink.sync()
        return WriteSummary(self._index, self._plaintext_bytes, self._ciphertext_bytes)


# --- reader ----------------------------------------------------------------


Source = BinaryIO | str | os.PathLike[str]


@contextlib.contextmanager
def _opened(source: Source) -> Iterator[BinaryIO]:
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as handle:
            yield handle
    else:
        yield source


@dataclass(frozen=True)
class Chunk:
    """One authenticated plaintext chunk."""

    index: int
    plaintext: bytes = field(repr=False)
    final: bool


class ContainerReader:
    """Authenticates the header on construction, then yields plaintext chunk by chunk.

    Output is only known to be complete when :meth:`chunks` is exhausted without
    an error: a consumer that must not act on a cut recording buffers or
    discards what it got when a :class:`ContainerError` arrives.
    """

    def __init__(
        self, source: BinaryIO, keys: KeyUnwrapper, *, wrapped_key: WrappedKey | None = None
    ) -> None:
        self._source = source
        self.header = read_header(source)
        wrapped = self.header.wrapped_key
        if self.header.detached:
            if wrapped_key is None:
                raise MissingWrappedKeyError("wrapped key is stored outside this file")
            if (wrapped_key.key_id, wrapped_key.version) != (wrapped.key_id, wrapped.version):
                raise MissingWrappedKeyError("supplied wrapped key names another key id/version")
            wrapped = wrapped_key
        self._keys = _Keys.from_data_key(keys.unwrap(wrapped))
        expected = self._keys.header_mac(self.header.unsigned_bytes())
        if not hmac.compare_digest(expected, self.header.mac):
            raise TamperedError("header fails authentication", chunk=None)

    def __repr__(self) -> str:
        return f"ContainerReader(header={self.header!r})"

    def _segments(self) -> Iterator[tuple[int, bytes, bool]]:
        full = self.header.chunk_size + TAG_BYTES
        current = _read_exact(self._source, full)
        index = 0
        while True:
            following = _read_exact(self._source, full) if len(current) == full else b""
            yield index, current, not following
            if not following:
                return
            current = following
            index += 1

    def _open(self, index: int, segment: bytes, final: bool) -> bytes | None:
        nonce = chunk_nonce(self.header.nonce_prefix, index, final)
        try:
            return self._keys.payload.decrypt(nonce, segment, None)
        except InvalidTag:
            return None

    def chunks(self) -> Iterator[Chunk]:
        """Plaintext chunks in order; raises a ContainerError naming the chunk at fault."""
        full = self.header.chunk_size + TAG_BYTES
        for index, segment, last in self._segments():
            if index >= MAX_CHUNKS:
                raise TamperedError("more chunks than the format allows", chunk=index)
            if not last:
                plaintext = self._open(index, segment, final=False)
                if plaintext is None:
                    raise TamperedError(
                        f"chunk {index} fails authentication (modified, reordered or duplicated)",
                        chunk=index,
                    )
                yield Chunk(index, plaintext, final=False)
                continue
            last_chunk = self._last_chunk(index, segment, full)
            yield last_chunk
            if not last_chunk.final:
                # A whole chunk that is not the final one: the writer stopped
                # (crashed) at a chunk boundary, or the final chunk was cut off.
                raise TruncatedError(
                    f"file ends after chunk {index} without a final chunk", chunk=index + 1
                )

    def _last_chunk(self, index: int, segment: bytes, full: int) -> Chunk:
        if not segment:
            raise TruncatedError("file ends after the header: no chunks", chunk=index)
        if len(segment) < TAG_BYTES:
            raise TruncatedError(
                f"file ends inside chunk {index} ({len(segment)} bytes, shorter than a tag)",
                chunk=index,
            )
        plaintext = self._open(index, segment, final=True)
        if plaintext is not None:
            return Chunk(index, plaintext, final=True)
        if len(segment) == full:
            plaintext = self._open(index, segment, final=False)
            if plaintext is not None:
                return Chunk(index, plaintext, final=False)
            raise TamperedError(f"last chunk {index} fails authentication", chunk=index)
        raise TruncatedOrTamperedError(
            f"last chunk {index} ({len(segment)} bytes) fails authentication: "
            "cut mid-chunk or modified",
            chunk=index,
        )

    def read_all(self) -> bytes:
        """The whole plaintext, fully authenticated (small files and tests)."""
        return b"".join(chunk.plaintext for chunk in self.chunks())


def decrypt(source: Source, keys: KeyUnwrapper, *, wrapped_key: WrappedKey | None = None) -> bytes:
    """Decrypt a whole container, raising on any damage."""
    with _opened(source) as handle:
        return ContainerReader(handle, keys, wrapped_key=wrapped_key).read_all()


@dataclass(frozen=True)
class Recovery:
    """What can be read from a container: every authenticated chunk up to the first problem."""

    header: Header
    chunks: tuple[bytes, ...] = field(repr=False)
    complete: bool
    problem: ContainerError | None

    @property
    def plaintext(self) -> bytes:
        return b"".join(self.chunks)


@dataclass(frozen=True)
class Inspection:
    """A container's state without its plaintext."""

    header: Header
    readable_chunks: int
    plaintext_bytes: int
    complete: bool
    problem: ContainerError | None


def _scan(
    source: Source, keys: KeyUnwrapper, wrapped_key: WrappedKey | None, keep: bool
) -> tuple[Header, list[bytes], int, int, bool, ContainerError | None]:
    with _opened(source) as handle:
        reader = ContainerReader(handle, keys, wrapped_key=wrapped_key)
        kept: list[bytes] = []
        count = size = 0
        complete = False
        problem: ContainerError | None = None
        try:
            for chunk in reader.chunks():
                count += 1
                size += len(chunk.plaintext)
                complete = chunk.final
                if keep:
                    kept.append(chunk.plaintext)
        except ContainerError as error:
            problem = error
        return reader.header, kept, count, size, complete, problem


def recover(
    source: Source, keys: KeyUnwrapper, *, wrapped_key: WrappedKey | None = None
) -> Recovery:
    """Every readable chunk of a possibly crashed or damaged container.

    Header problems (bad magic, tampered header, unknown key) still raise:
    without an authenticated header nothing is recoverable.
    """
    header, kept, _, _, complete, problem = _scan(source, keys, wrapped_key, keep=True)
    return Recovery(header, tuple(kept), complete, problem)


def inspect(
    source: Source, keys: KeyUnwrapper, *, wrapped_key: WrappedKey | None = None
) -> Inspection:
    """Completeness and integrity of a container, without keeping its plaintext."""
    header, _, count, size, complete, problem = _scan(source, keys, wrapped_key, keep=False)
    return Inspection(header, count, size, complete, problem)
