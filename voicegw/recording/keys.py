"""Key providers: wrap per-recording data keys under tenant keys.

Envelope encryption: every recording gets a fresh random 256-bit *data key*;
the provider *wraps* it under the tenant's current key-encryption key (KEK)
and the wrapped form travels with (or beside) the recording. Destroying a KEK
version, or a recording's wrapped key, makes the data unreadable everywhere,
backups included (crypto-shredding).

Wrapped blob formats (first byte names the scheme):

* ``0x01`` local AES-256-GCM: ``01 || nonce(12) || AES-GCM(kek, nonce, data_key, aad)``
* ``0x02`` X25519 ECIES: ``02 || ephemeral_public(32) || AES-GCM(k, n, data_key, aad)``
  where ``k || n = HKDF-SHA256(X25519(eph, recipient), salt=eph_pub || recipient_pub,
  info="voicegw wrap v1 x25519" || aad, 44 bytes)``

``aad = "voicegw-wrap-v1" 00 || key_id || 00 || version (u32 BE)`` binds a blob to
the key it claims, so a blob moved into another header does not unwrap.

Key material never appears in ``repr``, ``str`` or error messages.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import struct
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from voicegw.recording.errors import (
    InvalidStorageKeyError,
    KeyOperationNotPermittedError,
    KeyringFormatError,
    KeyShreddedError,
    KeyUnwrapError,
    UnknownKeyError,
    UnwrapNotPermittedError,
)
from voicegw.recording.storage import validate_component

DATA_KEY_BYTES = 32
SCHEME_LOCAL_AES_GCM = 0x01
SCHEME_X25519_ECIES = 0x02
_GCM_NONCE = 12
_X25519_INFO = b"voicegw wrap v1 x25519"
KEYRING_FORMAT = 1


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped under key ``key_id`` at ``version``; safe to store next to the data."""

    key_id: str
    version: int
    blob: bytes = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"WrappedKey(key_id={self.key_id!r}, version={self.version}, "
            f"blob=<{len(self.blob)} bytes>)"
        )


class KeyWrapper(Protocol):
    """What a container writer needs: wrap a fresh data key for a tenant."""

    def wrap(self, tenant: str, data_key: bytes) -> WrappedKey: ...


class KeyUnwrapper(Protocol):
    """What a container reader needs: recover the data key from its wrapped form."""

    def unwrap(self, wrapped: WrappedKey) -> bytes: ...


class KeyProvider(ABC):
    """Tenant key management: wrap/unwrap data keys, rotate and shred tenant keys."""

    @abstractmethod
    def wrap(self, tenant: str, data_key: bytes) -> WrappedKey:
        """Wrap ``data_key`` under the tenant's newest key version."""

    @abstractmethod
    def unwrap(self, wrapped: WrappedKey) -> bytes:
        """Return the data key, or raise a KeyProviderError saying why not."""

    @abstractmethod
    def rotate(self, tenant: str) -> int:
        """Add a new key version for new recordings; old versions stay readable. Returns it."""

    @abstractmethod
    def shred(self, tenant: str, version: int) -> None:
        """Destroy one key version: every data key wrapped by it becomes unrecoverable."""


def new_data_key() -> bytes:
    """A fresh random 256-bit data key."""
    return secrets.token_bytes(DATA_KEY_BYTES)


def wrap_aad(key_id: str, version: int) -> bytes:
    """Associated data binding a wrapped blob to the key id and version it claims."""
    return b"voicegw-wrap-v1\x00" + key_id.encode() + b"\x00" + struct.pack(">I", version)


def _check_data_key(data_key: bytes) -> None:
    if len(data_key) != DATA_KEY_BYTES:
        raise ValueError(f"data key must be {DATA_KEY_BYTES} bytes")


# --- local keyring ---------------------------------------------------------


@dataclass(frozen=True)
class _KeyVersion:
    version: int
    created_at: float
    material: bytes | None = field(repr=False)  # None once shredded
    shredded_at: float | None = None


class LocalKeyring(KeyProvider):
    """Per-tenant AES-256 KEKs in ``<directory>/<tenant>.keyring`` (JSON, 0600, dir 0700).

    The key id of a wrapped key is the tenant id. Files are replaced atomically
    (temp file in the same directory, fsync, ``os.replace``, fsync of the
    directory) under an exclusive ``flock`` so rotations from several processes
    do not lose versions. Shredding keeps a tombstone (version and time, no
    material) so versions are never reused and errors can say "shredded".

    The KEKs are protected by file permissions only; production deployments
    that need more put a KMS behind the same interface.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.directory = Path(directory)
        self._clock = clock
        self._lock = threading.Lock()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def __repr__(self) -> str:
        return f"LocalKeyring(directory={str(self.directory)!r})"

    # file handling

    def _path(self, tenant: str) -> Path:
        return self.directory / f"{validate_component('tenant', tenant)}.keyring"

    @contextlib.contextmanager
    def _locked(self, tenant: str) -> Iterator[None]:
        lock_path = self.directory / f".{validate_component('tenant', tenant)}.lock"
        with self._lock:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the flock

    def _load(self, tenant: str) -> list[_KeyVersion]:
        try:
            raw = self._path(tenant).read_bytes()
        except FileNotFoundError:
            return []
        try:
            doc = json.loads(raw)
            if doc["format"] != KEYRING_FORMAT or doc["tenant"] != tenant:
                raise KeyringFormatError("keyring file has the wrong format or tenant")
            return [_parse_version(entry) for entry in doc["versions"]]
        except (ValueError, KeyError, TypeError):
            raise KeyringFormatError("keyring file cannot be parsed") from None

    def _store(self, tenant: str, versions: list[_KeyVersion]) -> None:
        doc = {
            "format": KEYRING_FORMAT,
            "tenant": tenant,
            "versions": [_dump_version(v) for v in versions],
        }
        payload = json.dumps(doc, indent=1).encode()
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".keyring-", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path(tenant))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # queries

    def versions(self, tenant: str) -> tuple[int, ...]:
        """Key versions of ``tenant`` that can still unwrap (not shredded), oldest first."""
        return tuple(v.version for v in self._load(tenant) if v.material is not None)

    def current_version(self, tenant: str) -> int | None:
        """The version new recordings are wrapped under, if the tenant has any key."""
        versions = self._load(tenant)
        if not versions or versions[-1].material is None:
            return None  # the next wrap creates a new version
        return versions[-1].version

    # KeyProvider

    def wrap(self, tenant: str, data_key: bytes) -> WrappedKey:
        _check_data_key(data_key)
        versions = self._load(tenant)
        if not versions or versions[-1].material is None:
            # First recording of a tenant, or its newest version was shredded:
            # never fall back to an older version that may be next in line to go.
            self.rotate(tenant)
            versions = self._load(tenant)
        newest = versions[-1]
        assert newest.material is not None
        nonce = secrets.token_bytes(_GCM_NONCE)
        sealed = AESGCM(newest.material).encrypt(nonce, data_key, wrap_aad(tenant, newest.version))
        return WrappedKey(tenant, newest.version, bytes([SCHEME_LOCAL_AES_GCM]) + nonce + sealed)

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        blob = wrapped.blob
        if not blob or blob[0] != SCHEME_LOCAL_AES_GCM:
            raise KeyUnwrapError("wrapped key is not in the local keyring scheme")
        try:
            tenant = validate_component("tenant", wrapped.key_id)
        except InvalidStorageKeyError:
            raise UnknownKeyError("wrapped key names an invalid key id") from None
        entry = next((v for v in self._load(tenant) if v.version == wrapped.version), None)
        if entry is None:
            raise UnknownKeyError(f"key version {wrapped.version} does not exist in this keyring")
        if entry.material is None:
            raise KeyShreddedError(f"key version {wrapped.version} was shredded")
        nonce, sealed = blob[1 : 1 + _GCM_NONCE], blob[1 + _GCM_NONCE :]
        try:
            return AESGCM(entry.material).decrypt(nonce, sealed, wrap_aad(tenant, entry.version))
        except (InvalidTag, ValueError):
            raise KeyUnwrapError(
                f"wrapped key does not authenticate under key version {entry.version}"
            ) from None

    def rotate(self, tenant: str) -> int:
        with self._locked(tenant):
            versions = self._load(tenant)
            number = max((v.version for v in versions), default=0) + 1
            versions.append(_KeyVersion(number, self._clock(), AESGCM.generate_key(256)))
            self._store(tenant, versions)
            return number

    def shred(self, tenant: str, version: int) -> None:
        with self._locked(tenant):
            versions = self._load(tenant)
            if not any(v.version == version for v in versions):
                raise UnknownKeyError(f"key version {version} does not exist in this keyring")
            now = self._clock()
            self._store(
                tenant,
                [
                    _KeyVersion(v.version, v.created_at, None, v.shredded_at or now)
                    if v.version == version
                    else v
                    for v in versions
                ],
            )


def _parse_version(entry: Mapping[str, Any]) -> _KeyVersion:
    material = entry.get("key")
    decoded = base64.b64decode(material, validate=True) if material is not None else None
    if decoded is not None and len(decoded) != 32:
        raise ValueError("key must be 32 bytes")
    shredded = entry.get("shredded_at")
    return _KeyVersion(
        int(entry["version"]),
        float(entry["created_at"]),
        decoded,
        float(shredded) if shredded is not None else None,
    )


def _dump_version(version: _KeyVersion) -> dict[str, Any]:
    out: dict[str, Any] = {"version": version.version, "created_at": version.created_at}
    if version.material is not None:
        out["key"] = base64.b64encode(version.material).decode()
    else:
        out["shredded_at"] = version.shredded_at
    return out


# --- public-key mode -------------------------------------------------------


def _x25519_kdf(shared: bytes, eph_pub: bytes, recipient_pub: bytes, aad: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32 + _GCM_NONCE,
        salt=eph_pub + recipient_pub,
        info=_X25519_INFO + aad,
    ).derive(shared)


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_fingerprint(key: X25519PublicKey) -> str:
    """Short hex fingerprint of a tenant public key, for audit records and logs."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(_raw_public(key))
    return digest.finalize()[:8].hex()


class PublicKeyProvider(KeyProvider):
    """Gateway side of public-key mode: holds only tenants' X25519 public keys.

    It can wrap (so the gateway records) but can never unwrap (so a compromise
    of the gateway exposes no stored recording). Rotation means the tenant
    hands over a new public key (:meth:`add_public_key`); shredding means the
    tenant destroys a private key offline, so both are refused here.
    """

    def __init__(
        self, public_keys: Mapping[str, Mapping[int, X25519PublicKey]] | None = None
    ) -> None:
        self._keys: dict[str, dict[int, X25519PublicKey]] = {
            validate_component("tenant", tenant): dict(versions)
            for tenant, versions in (public_keys or {}).items()
        }

    def __repr__(self) -> str:
        return f"PublicKeyProvider(tenants={sorted(self._keys)!r})"

    def add_public_key(self, tenant: str, public_key: X25519PublicKey) -> int:
        """Register a new tenant public key version; new recordings use it. Returns the version."""
        versions = self._keys.setdefault(validate_component("tenant", tenant), {})
        number = max(versions, default=0) + 1
        versions[number] = public_key
        return number

    def wrap(self, tenant: str, data_key: bytes) -> WrappedKey:
        _check_data_key(data_key)
        versions = self._keys.get(tenant)
        if not versions:
            raise UnknownKeyError("tenant has no public key registered")
        version = max(versions)
        recipient = versions[version]
        ephemeral = X25519PrivateKey.generate()
        eph_pub = _raw_public(ephemeral.public_key())
        recipient_pub = _raw_public(recipient)
        aad = wrap_aad(tenant, version)
        okm = _x25519_kdf(ephemeral.exchange(recipient), eph_pub, recipient_pub, aad)
        sealed = AESGCM(okm[:32]).encrypt(okm[32:], data_key, aad)
        return WrappedKey(tenant, version, bytes([SCHEME_X25519_ECIES]) + eph_pub + sealed)

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        raise UnwrapNotPermittedError(
            "public-key mode: the gateway holds no private key; decrypt offline with "
            "PrivateKeyUnwrapper"
        )

    def rotate(self, tenant: str) -> int:
        raise KeyOperationNotPermittedError(
            "public-key mode: the tenant generates a new key pair offline; register it "
            "with add_public_key"
        )

    def shred(self, tenant: str, version: int) -> None:
        raise KeyOperationNotPermittedError(
            "public-key mode: shredding means destroying the tenant's private key offline"
        )


class PrivateKeyUnwrapper:
    """Offline side of public-key mode: unwraps with a tenant's X25519 private keys."""

    def __init__(self, tenant: str, private_keys: Mapping[int, X25519PrivateKey]) -> None:
        self.tenant = validate_component("tenant", tenant)
        self._keys = dict(private_keys)

    def __repr__(self) -> str:
        return f"PrivateKeyUnwrapper(tenant={self.tenant!r}, versions={sorted(self._keys)!r})"

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        blob = wrapped.blob
        if not blob or blob[0] != SCHEME_X25519_ECIES or len(blob) < 1 + 32 + 16:
            raise KeyUnwrapError("wrapped key is not in the X25519 scheme")
        if wrapped.key_id != self.tenant:
            raise UnknownKeyError("wrapped key belongs to another tenant")
        private = self._keys.get(wrapped.version)
        if private is None:
            raise UnknownKeyError(f"no private key for version {wrapped.version}")
        eph_pub, sealed = blob[1:33], blob[33:]
        aad = wrap_aad(wrapped.key_id, wrapped.version)
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
            okm = _x25519_kdf(shared, eph_pub, _raw_public(private.public_key()), aad)
            return AESGCM(okm[:32]).decrypt(okm[32:], sealed, aad)
        except (InvalidTag, ValueError):
            raise KeyUnwrapError(
                f"wrapped key does not authenticate under private key version {wrapped.version}"
            ) from None
