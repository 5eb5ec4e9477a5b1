"""Error types of the recording layer.

Every failure names *what* was wrong and *where* (which chunk, which key
version), never the key material or plaintext that was involved. All derive
from :class:`RecordingError` so a caller that only needs "this recording
cannot be read" catches one type.
"""

from __future__ import annotations


class RecordingError(Exception):
    """Base class of every recording-layer error."""


# --- container -------------------------------------------------------------


class ContainerError(RecordingError):
    """An encrypted container is malformed, damaged or incomplete.

    ``chunk`` is the index of the chunk at fault, or ``None`` when the header
    (or the file as a whole) is at fault.
    """

    def __init__(self, message: str, *, chunk: int | None = None) -> None:
        super().__init__(message)
        self.chunk = chunk


class NotAContainerError(ContainerError):
    """The bytes do not start with the container magic."""


class UnsupportedVersionError(ContainerError):
    """The container uses a format version or cipher suite this code cannot read."""


class HeaderFormatError(ContainerError):
    """The header is cut short or has a field outside its allowed range."""


class TamperedError(ContainerError):
    """Authentication failed: the header or a chunk was modified, reordered or duplicated."""


class TruncatedError(ContainerError):
    """The file ends before its final chunk: a crash or a cut, not a complete recording."""


class TruncatedOrTamperedError(TruncatedError, TamperedError):
    """The last, short chunk fails authentication.

    A chunk cut mid-write and a modified final chunk look the same from the
    bytes alone, so this error is both a :class:`TruncatedError` and a
    :class:`TamperedError`.
    """


class MissingWrappedKeyError(ContainerError):
    """The container keeps its wrapped key outside the file and none was supplied."""


# --- keys ------------------------------------------------------------------


class KeyProviderError(RecordingError):
    """A key could not be produced, wrapped or unwrapped."""


class UnknownKeyError(KeyProviderError):
    """No key with this id and version exists (never created, or another keyring)."""


class KeyShreddedError(UnknownKeyError):
    """The key version was destroyed on purpose: data wrapped by it is gone for good."""


class KeyUnwrapError(KeyProviderError):
    """The wrapped key failed authentication: wrong key material or a modified blob."""


class UnwrapNotPermittedError(KeyProviderError):
    """This provider holds only public keys: it can wrap, never unwrap."""


class KeyOperationNotPermittedError(KeyProviderError):
    """The provider cannot perform this operation (for example rotate in public-key mode)."""


class KeyringFormatError(KeyProviderError):
    """A keyring file exists but cannot be parsed."""


# --- storage ---------------------------------------------------------------


class StorageError(RecordingError):
    """A storage backend operation failed."""


class InvalidStorageKeyError(StorageError):
    """A tenant, region, recording id or storage key fails validation (e.g. path traversal)."""


class ObjectNotFoundError(StorageError):
    """No object is stored under the key."""


class ObjectExistsError(StorageError):
    """An object (finished or in progress) already exists under the key."""
