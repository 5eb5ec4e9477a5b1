"""Properties of the container: any split of writes round-trips; any damage raises our error."""

from __future__ import annotations

import contextlib
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from voicegw.recording.container import ContainerWriter, decrypt, recover
from voicegw.recording.errors import RecordingError
from voicegw.recording.keys import WrappedKey

DATA_KEY = bytes(range(32))
WRAPPED = WrappedKey("acme", 1, b"\x01" + bytes(40))


class MemorySink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def sync(self) -> None:
        pass


class FixedKey:
    def unwrap(self, wrapped: WrappedKey) -> bytes:
        return DATA_KEY


def seal(pieces: list[bytes], chunk_size: int) -> bytes:
    sink = MemorySink()
    writer = ContainerWriter(
        sink,
        data_key=DATA_KEY,
        wrapped_key=WRAPPED,
        nonce_prefix=b"\x07" * 7,
        chunk_size=chunk_size,
    )
    for piece in pieces:
        writer.write(piece)
    writer.finish()
    return bytes(sink.data)


@settings(max_examples=150, deadline=None)
@given(
    pieces=st.lists(st.binary(max_size=90), max_size=12),
    chunk_size=st.integers(min_value=1, max_value=64),
)
def test_any_write_pattern_round_trips(pieces: list[bytes], chunk_size: int) -> None:
    blob = seal(pieces, chunk_size)
    assert decrypt(io.BytesIO(blob), FixedKey()) == b"".join(pieces)


@settings(max_examples=200, deadline=None)
@given(
    plaintext=st.binary(min_size=0, max_size=200),
    position=st.floats(min_value=0, max_value=1, exclude_max=True),
    mask=st.integers(min_value=1, max_value=255),
)
def test_any_single_byte_change_is_rejected(plaintext: bytes, position: float, mask: int) -> None:
    blob = bytearray(seal([plaintext], 32))
    blob[int(position * len(blob))] ^= mask
    try:
        decrypt(io.BytesIO(bytes(blob)), FixedKey())
    except RecordingError:
        return
    raise AssertionError("a modified container decrypted")


@settings(max_examples=200, deadline=None)
@given(plaintext=st.binary(max_size=200), cut=st.integers(min_value=0))
def test_any_truncation_is_rejected_but_leaves_a_prefix_recoverable(
    plaintext: bytes, cut: int
) -> None:
    blob = seal([plaintext], 32)
    cut %= len(blob)
    try:
        decrypt(io.BytesIO(blob[:cut]), FixedKey())
    except RecordingError:
        pass
    else:
        raise AssertionError("a truncated container decrypted")
    try:
        found = recover(io.BytesIO(blob[:cut]), FixedKey())
    except RecordingError:
        return  # the header itself was cut
    assert not found.complete
    assert plaintext.startswith(found.plaintext)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_decrypt_or_raise_our_error_and_nothing_else(data: bytes) -> None:
    prefixed = b"\x89VGR\r\n\x1a\n\x01\x01" + data
    for candidate in (data, prefixed):
        with contextlib.suppress(RecordingError):
            decrypt(io.BytesIO(candidate), FixedKey())
