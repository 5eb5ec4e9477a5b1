"""How a speech provider fails, in the terms failover and the call flow act on.

Modelled on livekit-agents ``_exceptions.py``: every vendor error is mapped to one
type carrying whether trying again (or trying another provider) can help, and the
vendor's status code when it has one. Messages are static text: a vendor error body
may quote audio-derived text, so it is never copied into the message.
"""

from __future__ import annotations


class ProviderError(Exception):
    """A provider could not do the work asked of it."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, retryable={self.retryable}, "
            f"status={self.status})"
        )


class ProviderTimeoutError(ProviderError):
    """The provider did not answer in time; another provider may."""

    def __init__(self, message: str = "provider timed out") -> None:
        super().__init__(message, retryable=True, status=None)


class ProviderConnectionError(ProviderError):
    """The provider could not be reached."""

    def __init__(self, message: str = "provider unreachable") -> None:
        super().__init__(message, retryable=True, status=None)


class NoProviderAvailableError(ProviderError):
    """Every provider in the eligible list failed or none was eligible: the feature is off."""

    def __init__(self, message: str = "no eligible provider could serve the request") -> None:
        super().__init__(message, retryable=False, status=None)
