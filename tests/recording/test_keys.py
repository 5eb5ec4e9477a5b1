"""Key providers: local keyring (rotation, permissions, shredding) and public-key mode."""

from __future__ import annotations

import base64
import io
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from voicegw.recording.container import ContainerWriter, decrypt, read_header
from voicegw.recording.errors import (
    InvalidStorageKeyError,
    KeyOperationNotPermittedError,
    KeyringFormatError,
    KeyShreddedError,
    KeyUnwrapError,
    RecordingError,
    UnknownKeyError,
    UnwrapNotPermittedError,
)
from voicegw.recording.keys import (
    KeyWrapper,
    LocalKeyring,
    PrivateKeyUnwrapper,
    PublicKeyProvider,
    WrappedKey,
    new_data_key,
    public_key_fingerprint,
)


class MemorySink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def sync(self) -> None:
        pass


@pytest.fixture
def keyring(tmp_path: Path) -> LocalKeyring:
    return LocalKeyring(tmp_path / "keys", clock=lambda: 1_700_000_000.0)


def record(keys: KeyWrapper, tenant: str, plaintext: bytes) -> bytes:
    sink = MemorySink()
    writer = ContainerWriter.create(sink, keys, tenant, chunk_size=256)
    writer.write(plaintext)
    writer.finish()
    return bytes(sink.data)


def key_materials(keyring: LocalKeyring, tenant: str) -> list[bytes]:
    doc = json.loads((keyring.directory / f"{tenant}.keyring").read_text())
    return [base64.b64decode(v["key"]) for v in doc["versions"] if "key" in v]


# --- local keyring -------------------------------------------------------------


def test_first_wrap_creates_version_1_and_round_trips(keyring: LocalKeyring) -> None:
    data_key = new_data_key()
    wrapped = keyring.wrap("acme", data_key)
    assert (wrapped.key_id, wrapped.version) == ("acme", 1)
    assert keyring.unwrap(wrapped) == data_key


def test_rotation_adds_a_version_used_for_new_recordings_and_keeps_old_ones_readable(
    keyring: LocalKeyring,
) -> None:
    old = record(keyring, "acme", b"before rotation")
    assert keyring.rotate("acme") == 2
    new = record(keyring, "acme", b"after rotation")
    assert read_header(io.BytesIO(old)).wrapped_key.version == 1
    assert read_header(io.BytesIO(new)).wrapped_key.version == 2
    assert decrypt(io.BytesIO(old), keyring) == b"before rotation"
    assert decrypt(io.BytesIO(new), keyring) == b"after rotation"
    assert keyring.versions("acme") == (1, 2)
    assert keyring.current_version("acme") == 2


def test_keyring_persists_across_instances(keyring: LocalKeyring) -> None:
    blob = record(keyring, "acme", b"persisted")
    assert decrypt(io.BytesIO(blob), LocalKeyring(keyring.directory)) == b"persisted"


def test_keyring_files_are_0600_in_a_0700_directory(keyring: LocalKeyring) -> None:
    keyring.rotate("acme")
    keyring.rotate("acme")
    assert stat.S_IMODE(keyring.directory.stat().st_mode) == 0o700
    files = list(keyring.directory.iterdir())
    assert {f.name for f in files} == {"acme.keyring", ".acme.lock"}  # no temp files left
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_tenants_have_separate_keys(keyring: LocalKeyring) -> None:
    wrapped = keyring.wrap("acme", new_data_key())
    keyring.rotate("globex")
    moved = WrappedKey("globex", wrapped.version, wrapped.blob)
    with pytest.raises(KeyUnwrapError):
        keyring.unwrap(moved)


def test_shredding_a_version_makes_its_recordings_unreadable_and_spares_others(
    keyring: LocalKeyring,
) -> None:
    doomed = record(keyring, "acme", b"old call")
    keyring.rotate("acme")
    kept = record(keyring, "acme", b"new call")
    material_v1 = key_materials(keyring, "acme")[0]
    keyring.shred("acme", 1)
    with pytest.raises(KeyShreddedError, match="version 1 was shredded"):
        decrypt(io.BytesIO(doomed), keyring)
    with pytest.raises(KeyShreddedError):
        decrypt(io.BytesIO(doomed), LocalKeyring(keyring.directory))
    assert decrypt(io.BytesIO(kept), keyring) == b"new call"
    # The material is gone from the file; only a tombstone remains.
    raw = (keyring.directory / "acme.keyring").read_bytes()
    assert base64.b64encode(material_v1) not in raw
    assert json.loads(raw)["versions"][0] == {
        "version": 1,
        "created_at": 1_700_000_000.0,
        "shredded_at": 1_700_000_000.0,
    }
    assert keyring.versions("acme") == (2,)


def test_shredding_the_newest_version_makes_the_next_wrap_use_a_new_one(
    keyring: LocalKeyring,
) -> None:
    keyring.rotate("acme")
    keyring.rotate("acme")
    keyring.shred("acme", 2)
    assert keyring.current_version("acme") is None
    assert keyring.wrap("acme", new_data_key()).version == 3


def test_shredding_an_unknown_version_is_an_error(keyring: LocalKeyring) -> None:
    keyring.rotate("acme")
    with pytest.raises(UnknownKeyError):
        keyring.shred("acme", 9)


def test_unknown_version_is_reported(keyring: LocalKeyring) -> None:
    wrapped = keyring.wrap("acme", new_data_key())
    with pytest.raises(UnknownKeyError, match="version 5"):
        keyring.unwrap(WrappedKey("acme", 5, wrapped.blob))


@pytest.mark.parametrize("tenant", ["../etc", "a/b", "..", "", ".hidden", "a\x00b"])
def test_tenant_names_cannot_escape_the_key_directory(keyring: LocalKeyring, tenant: str) -> None:
    with pytest.raises(InvalidStorageKeyError):
        keyring.rotate(tenant)
    with pytest.raises(UnknownKeyError):
        keyring.unwrap(WrappedKey(tenant, 1, b"\x01" + bytes(60)))


def test_corrupt_keyring_file_is_reported(keyring: LocalKeyring) -> None:
    (keyring.directory / "acme.keyring").write_text("{not json")
    with pytest.raises(KeyringFormatError):
        keyring.wrap("acme", new_data_key())


def test_data_key_of_wrong_length_is_refused(keyring: LocalKeyring) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        keyring.wrap("acme", b"short")


def test_keys_never_appear_in_repr_or_errors(keyring: LocalKeyring) -> None:
    data_key = new_data_key()
    wrapped = keyring.wrap("acme", data_key)
    sink = MemorySink()
    writer = ContainerWriter.create(sink, keyring, "acme")
    writer.finish()
    shown = " ".join(
        [repr(keyring), repr(wrapped), str(wrapped), repr(writer), repr(writer.header)]
    )
    secrets = [data_key, wrapped.blob, *key_materials(keyring, "acme")]
    for secret in secrets:
        for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
            assert form not in shown
    assert "blob=<" in repr(wrapped)
    with pytest.raises(RecordingError) as caught:
        keyring.unwrap(WrappedKey("acme", 1, wrapped.blob[:-1] + bytes([wrapped.blob[-1] ^ 1])))
    assert wrapped.blob.hex() not in str(caught.value)


# --- public-key mode -------------------------------------------------------------


def test_public_key_mode_wraps_but_cannot_unwrap() -> None:
    private = X25519PrivateKey.generate()
    gateway = PublicKeyProvider({"acme": {1: private.public_key()}})
    blob = record(gateway, "acme", b"for the tenant's eyes only")
    with pytest.raises(UnwrapNotPermittedError):
        decrypt(io.BytesIO(blob), gateway)
    offline = PrivateKeyUnwrapper("acme", {1: private})
    assert decrypt(io.BytesIO(blob), offline) == b"for the tenant's eyes only"


def test_public_key_mode_refuses_rotate_and_shred() -> None:
    gateway = PublicKeyProvider()
    with pytest.raises(KeyOperationNotPermittedError):
        gateway.rotate("acme")
    with pytest.raises(KeyOperationNotPermittedError):
        gateway.shred("acme", 1)


def test_public_key_rotation_is_a_new_public_key_and_old_recordings_stay_readable() -> None:
    first, second = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    gateway = PublicKeyProvider()
    assert gateway.add_public_key("acme", first.public_key()) == 1
    old = record(gateway, "acme", b"v1")
    assert gateway.add_public_key("acme", second.public_key()) == 2
    new = record(gateway, "acme", b"v2")
    offline = PrivateKeyUnwrapper("acme", {1: first, 2: second})
    assert decrypt(io.BytesIO(old), offline) == b"v1"
    assert decrypt(io.BytesIO(new), offline) == b"v2"
    # Destroying the old private key offline is the shred of public-key mode.
    with pytest.raises(UnknownKeyError):
        decrypt(io.BytesIO(old), PrivateKeyUnwrapper("acme", {2: second}))


def test_wrong_private_key_cannot_unwrap() -> None:
    right, wrong = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    blob = record(PublicKeyProvider({"acme": {1: right.public_key()}}), "acme", b"x")
    with pytest.raises(KeyUnwrapError):
        decrypt(io.BytesIO(blob), PrivateKeyUnwrapper("acme", {1: wrong}))


def test_private_unwrapper_refuses_another_tenant_and_local_blobs(keyring: LocalKeyring) -> None:
    private = X25519PrivateKey.generate()
    wrapped = PublicKeyProvider({"acme": {1: private.public_key()}}).wrap("acme", new_data_key())
    with pytest.raises(UnknownKeyError):
        PrivateKeyUnwrapper("globex", {1: private}).unwrap(WrappedKey("acme", 1, wrapped.blob))
    with pytest.raises(KeyUnwrapError):
        PrivateKeyUnwrapper("acme", {1: private}).unwrap(keyring.wrap("acme", new_data_key()))
    with pytest.raises(KeyUnwrapError):
        keyring.unwrap(wrapped)


def test_public_key_mode_without_a_key_for_the_tenant_refuses_to_wrap() -> None:
    with pytest.raises(UnknownKeyError):
        PublicKeyProvider().wrap("acme", new_data_key())


def test_public_key_fingerprint_is_stable_and_short() -> None:
    private = X25519PrivateKey.from_private_bytes(bytes(range(32)))
    fingerprint = public_key_fingerprint(private.public_key())
    assert fingerprint == public_key_fingerprint(private.public_key())
    assert len(fingerprint) == 16
    assert (
        repr(PrivateKeyUnwrapper("acme", {1: private}))
        == "PrivateKeyUnwrapper(tenant='acme', versions=[1])"
    )
