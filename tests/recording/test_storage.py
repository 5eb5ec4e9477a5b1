"""Local filesystem storage: layout per region and tenant, atomic finalisation, path safety."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from voicegw.recording.container import ContainerWriter, decrypt
from voicegw.recording.errors import (
    InvalidStorageKeyError,
    ObjectExistsError,
    ObjectNotFoundError,
)
from voicegw.recording.keys import LocalKeyring
from voicegw.recording.storage import LocalFilesystemStorage, recording_key

STARTED = datetime(2026, 11, 3, 14, 5, tzinfo=UTC)


@pytest.fixture
def storage(tmp_path: Path) -> LocalFilesystemStorage:
    return LocalFilesystemStorage(tmp_path / "recordings")


def test_recording_key_layout() -> None:
    assert recording_key("eu-west", "acme", "rec-42", STARTED) == "eu-west/acme/2026/11/rec-42.vgr"


def test_finalised_object_lives_under_region_tenant_year_month(
    storage: LocalFilesystemStorage,
) -> None:
    key = recording_key("eu", "acme", "rec-1", STARTED)
    handle = storage.create(key)
    handle.write(b"ciphertext")
    assert not storage.exists(key)  # invisible until finalised
    assert list(storage.list()) == []
    handle.finalize()
    path = storage.root / "eu" / "acme" / "2026" / "11" / "rec-1.vgr"
    assert path.read_bytes() == b"ciphertext"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (path.parent, *list(path.parents)[1:5]):  # month .. region, root
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert storage.exists(key)
    assert storage.size(key) == len(b"ciphertext")
    assert list(storage.list("eu/acme")) == [key]
    assert list(storage.list_incomplete()) == []
    with storage.open_read(key) as source:
        assert source.read() == b"ciphertext"


def test_list_is_scoped_by_region_and_tenant(storage: LocalFilesystemStorage) -> None:
    for region, tenant, rec in [("eu", "acme", "a"), ("eu", "globex", "b"), ("us", "acme", "c")]:
        handle = storage.create(recording_key(region, tenant, rec, STARTED))
        handle.finalize()
    assert list(storage.list("eu/acme")) == ["eu/acme/2026/11/a.vgr"]
    assert list(storage.list("eu")) == ["eu/acme/2026/11/a.vgr", "eu/globex/2026/11/b.vgr"]
    assert len(list(storage.list())) == 3
    assert list(storage.list("ap")) == []


def test_creating_an_existing_object_is_refused(storage: LocalFilesystemStorage) -> None:
    key = recording_key("eu", "acme", "dup", STARTED)
    storage.create(key).finalize()
    with pytest.raises(ObjectExistsError):
        storage.create(key)


def test_second_writer_for_an_unfinished_object_is_refused(storage: LocalFilesystemStorage) -> None:
    key = recording_key("eu", "acme", "busy", STARTED)
    first = storage.create(key)
    with pytest.raises(ObjectExistsError):
        storage.create(key)
    first.abort()
    assert list(storage.list_incomplete()) == []


def test_delete_removes_finished_and_unfinished(storage: LocalFilesystemStorage) -> None:
    done, partial = (recording_key("eu", "acme", r, STARTED) for r in ("done", "partial"))
    storage.create(done).finalize()
    storage.create(partial).write(b"x")
    assert storage.delete(done) and storage.delete(partial)
    assert not storage.delete(done)
    assert list(storage.list()) == list(storage.list_incomplete()) == []


def test_missing_objects_are_reported(storage: LocalFilesystemStorage) -> None:
    key = recording_key("eu", "acme", "nope", STARTED)
    with pytest.raises(ObjectNotFoundError):
        storage.open_read(key)
    with pytest.raises(ObjectNotFoundError):
        storage.size(key)
    with pytest.raises(ObjectNotFoundError):
        storage.open_incomplete(key)


def test_encrypted_recording_round_trips_through_storage(
    storage: LocalFilesystemStorage, tmp_path: Path
) -> None:
    keyring = LocalKeyring(tmp_path / "keys")
    key = recording_key("eu", "acme", "call-7", STARTED)
    handle = storage.create(key)
    writer = ContainerWriter.create(handle, keyring, "acme", chunk_size=512)
    for _ in range(50):
        writer.write(bytes(640))
    writer.finish()
    handle.finalize()
    with storage.open_read(key) as source:
        assert decrypt(source, keyring) == bytes(640 * 50)


@pytest.mark.parametrize(
    ("region", "tenant", "recording"),
    [
        ("eu", "../acme", "r"),
        ("eu", "..", "r"),
        ("eu", "acme/evil", "r"),
        ("eu", "acme", "../../etc/passwd"),
        ("..", "acme", "r"),
        ("eu", "", "r"),
        ("eu", "acme", ""),
        ("eu", ".acme", "r"),
        ("eu", "acme\x00", "r"),
        ("eu", "acme\n", "r"),
        ("eu", "ac me", "r"),
        ("eu", "acme", "r\\..\\x"),
        ("EU", "acme", "r"),
        ("eu", "a" * 65, "r"),
    ],
)
def test_path_traversal_and_odd_components_are_rejected(
    region: str, tenant: str, recording: str
) -> None:
    with pytest.raises(InvalidStorageKeyError):
        recording_key(region, tenant, recording, STARTED)


@pytest.mark.parametrize(
    "key",
    [
        "eu/../acme/2026/11/r.vgr",
        "/etc/passwd",
        "eu/acme/2026/11/../../../../x.vgr",
        "eu/acme/2026/13/r.vgr",
        "eu/acme/26/11/r.vgr",
        "eu/acme/2026/11/r.wav",
        "eu/acme/2026/11/.vgr",
        "eu//acme/2026/11/r.vgr",
        "eu/acme/2026/11/sub/r.vgr",
    ],
)
def test_backend_rejects_keys_it_did_not_make(storage: LocalFilesystemStorage, key: str) -> None:
    for operation in (storage.create, storage.open_read, storage.exists, storage.delete):
        with pytest.raises(InvalidStorageKeyError):
            operation(key)


@pytest.mark.parametrize("prefix", ["..", "eu/..", "eu/acme/2026/11/x", "eu/a/b"])
def test_listing_prefix_is_validated(storage: LocalFilesystemStorage, prefix: str) -> None:
    with pytest.raises(InvalidStorageKeyError):
        list(storage.list(prefix))


def test_error_messages_do_not_echo_the_rejected_value() -> None:
    with pytest.raises(InvalidStorageKeyError) as caught:
        recording_key("eu", "../secret-tenant", "r", STARTED)
    assert "secret" not in str(caught.value)


def test_foreign_files_in_the_tree_are_not_listed(storage: LocalFilesystemStorage) -> None:
    storage.create(recording_key("eu", "acme", "ok", STARTED)).finalize()
    stray = storage.root / "eu" / "acme" / "2026" / "11" / "weird name.vgr"
    stray.write_bytes(b"")
    assert list(storage.list()) == ["eu/acme/2026/11/ok.vgr"]
