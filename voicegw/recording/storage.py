"""Storage backends for encrypted recordings.

Backends only ever see *ciphertext* and *keys* (object-storage style names
such as ``eu-west/acme/2026/11/rec-42.vgr``), so an S3/GCS/Azure backend can
implement the same interface with multipart uploads: ``create`` starts an
upload, ``write`` appends parts, ``finalize`` completes it atomically.

Every key component is validated against a strict pattern before it touches a
path: tenant isolation (DESIGN §4.6) rests on "no component can contain a
separator, ``..`` or a NUL".
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from voicegw.recording.errors import (
    InvalidStorageKeyError,
    ObjectExistsError,
    ObjectNotFoundError,
)

RECORDING_SUFFIX = ".vgr"
PARTIAL_SUFFIX = ".partial"

# Component kind -> pattern. Deliberately narrow: no dots (so no "." or ".."),
# no separators, no whitespace, bounded length.
_COMPONENT_PATTERNS: dict[str, re.Pattern[str]] = {
    "region": re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?"),
    "tenant": re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9])?"),
    "recording": re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,126}[A-Za-z0-9])?"),
    "year": re.compile(r"[0-9]{4}"),
    "month": re.compile(r"0[1-9]|1[0-2]"),
}


def validate_component(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe ``kind`` component, else raise InvalidStorageKeyError."""
    pattern = _COMPONENT_PATTERNS[kind]
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        # The value itself is not echoed: it may be attacker-chosen junk.
        raise InvalidStorageKeyError(f"invalid {kind} identifier")
    return value


def recording_key(region: str, tenant: str, recording_id: str, started_at: datetime) -> str:
    """Storage key ``<region>/<tenant>/<yyyy>/<mm>/<recording id>.vgr`` for a recording."""
    parts = (
        validate_component("region", region),
        validate_component("tenant", tenant),
        f"{started_at.year:04d}",
        f"{started_at.month:02d}",
        validate_component("recording", recording_id) + RECORDING_SUFFIX,
    )
    return "/".join(parts)


def validate_key(key: str) -> tuple[str, ...]:
    """Split a storage key into its components, rejecting anything not made by recording_key."""
    parts = key.split("/") if isinstance(key, str) else []
    if len(parts) != 5 or not parts[4].endswith(RECORDING_SUFFIX):
        raise InvalidStorageKeyError("storage key must be region/tenant/yyyy/mm/<id>.vgr")
    region, tenant, year, month, name = parts
    validate_component("region", region)
    validate_component("tenant", tenant)
    validate_component("year", year)
    validate_component("month", month)
    validate_component("recording", name[: -len(RECORDING_SUFFIX)])
    return tuple(parts)


def validate_prefix(prefix: str) -> tuple[str, ...]:
    """Validate a listing prefix: 0 to 4 leading components of a storage key."""
    if prefix == "":
        return ()
    parts = tuple(prefix.strip("/").split("/"))
    kinds = ("region", "tenant", "year", "month")
    if len(parts) > len(kinds):
        raise InvalidStorageKeyError("listing prefix has too many components")
    for kind, part in zip(kinds, parts, strict=False):
        validate_component(kind, part)
    return parts


class AppendHandle(ABC):
    """An object being written: append ciphertext, then finalize or abort.

    Until ``finalize`` the object is invisible to ``exists``/``open_read``/``list``.
    """

    key: str

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Append ``data``; after return it survives a process kill (not a power cut)."""

    @abstractmethod
    def sync(self) -> None:
        """Make everything written so far durable (fsync)."""

    @abstractmethod
    def finalize(self) -> None:
        """Make the object visible under its key, atomically and durably."""

    @abstractmethod
    def abort(self) -> None:
        """Discard the object in progress."""


class StorageBackend(ABC):
    """Where encrypted recordings live. Takes keys, never filesystem paths."""

    @abstractmethod
    def create(self, key: str) -> AppendHandle:
        """Start a new object; ObjectExistsError if one (finished or in progress) exists."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """Open a finished object for reading (binary, seekable)."""

    @abstractmethod
    def open_incomplete(self, key: str) -> BinaryIO:
        """Open an object left unfinished by a crash, for recovery."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete a finished or unfinished object; True if something was deleted."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True if a finished object is stored under ``key``."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes of a finished object."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys of finished objects under ``prefix`` (e.g. ``"eu/acme"``), sorted."""

    @abstractmethod
    def list_incomplete(self, prefix: str = "") -> Iterator[str]:
        """Keys of objects left unfinished (crash recovery), sorted."""


class _LocalAppendHandle(AppendHandle):
    def __init__(self, key: str, final: Path, partial: Path) -> None:
        self.key = key
        self._final = final
        self._partial = partial
        # Unbuffered: each write() is one syscall, so a process kill leaves
        # every completed chunk on disk.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd: int | None = os.open(partial, flags, 0o600)
        except FileExistsError:
            raise ObjectExistsError("an unfinished object already exists under this key") from None

    def _require_open(self) -> int:
        if self._fd is None:
            raise ValueError("append handle is closed")
        return self._fd

    def write(self, data: bytes) -> None:
        fd = self._require_open()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def sync(self) -> None:
        os.fsync(self._require_open())

    def finalize(self) -> None:
        fd = self._require_open()
        os.fsync(fd)
        os.close(fd)
        self._fd = None
        if self._final.exists():
            raise ObjectExistsError("a finished object already exists under this key")
        os.replace(self._partial, self._final)
        _fsync_dir(self._final.parent)

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._partial.unlink(missing_ok=True)

    def __del__(self) -> None:
        # A forgotten handle must not leak a descriptor; the partial file stays
        # for recovery, as it would after a crash.
        if getattr(self, "_fd", None) is not None:
            assert self._fd is not None
            os.close(self._fd)


def _make_private_dirs(root: Path, leaf: Path) -> None:
    # mkdir(parents=True) would give intermediate directories the umask's mode;
    # every level (root, region, tenant, year, month) is created 0700 instead.
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    current = root
    for part in leaf.relative_to(root).parts:
        current = current / part
        current.mkdir(mode=0o700, exist_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalFilesystemStorage(StorageBackend):
    """Recordings as files under ``<root>/<region>/<tenant>/<yyyy>/<mm>/<id>.vgr``.

    Directories are created 0700 and files 0600; unfinished objects carry a
    ``.partial`` suffix until ``finalize`` renames them into place.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalFilesystemStorage(root={str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key))

    def _partial(self, key: str) -> Path:
        final = self._path(key)
        return final.with_name(final.name + PARTIAL_SUFFIX)

    def create(self, key: str) -> AppendHandle:
        final = self._path(key)
        if final.exists():
            raise ObjectExistsError("a finished object already exists under this key")
        _make_private_dirs(self.root, final.parent)
        return _LocalAppendHandle(key, final, self._partial(key))

    def open_read(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise ObjectNotFoundError("no finished object under this key") from None

    def open_incomplete(self, key: str) -> BinaryIO:
        try:
            return self._partial(key).open("rb")
        except FileNotFoundError:
            raise ObjectNotFoundError("no unfinished object under this key") from None

    def delete(self, key: str) -> bool:
        deleted = False
        for path in (self._path(key), self._partial(key)):
            try:
                path.unlink()
                deleted = True
            except FileNotFoundError:
                pass
        return deleted

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFoundError("no finished object under this key") from None

    def _walk(self, prefix: str, suffix: str) -> Iterator[str]:
        base = self.root.joinpath(*validate_prefix(prefix))
        if not base.is_dir():
            return
        found: list[str] = []
        for path in base.rglob("*" + suffix):
            relative = path.relative_to(self.root).as_posix()
            key = relative[: -len(suffix)] + RECORDING_SUFFIX
            try:
                validate_key(key)
            except InvalidStorageKeyError:
                continue  # foreign file in the tree: not ours to list
            found.append(key)
        yield from sorted(found)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self._walk(prefix, RECORDING_SUFFIX)

    def list_incomplete(self, prefix: str = "") -> Iterator[str]:
        return self._walk(prefix, RECORDING_SUFFIX + PARTIAL_SUFFIX)
