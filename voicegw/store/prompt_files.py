"""Uploaded prompt recordings (consent notices, announcements), validated and kept per tenant.

Prompts are the tenant's own announcements, not callers' data, so they are kept
as plain WAV under ``<data_dir>/prompts/<tenant>/<name>``. Each is checked on
upload (a readable WAV, mono, a telephony-friendly rate, 0.5-60 s) so a bad file
is refused with a reason instead of failing on a live call.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import soundfile

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.wav$")
MAX_BYTES = 8 * 1024 * 1024
MIN_SECONDS, MAX_SECONDS = 0.5, 60.0
SAMPLE_RATES = frozenset({8000, 16000, 22050, 24000, 32000, 44100, 48000})
SUBTYPES = frozenset({"PCM_16", "PCM_24", "PCM_U8", "ULAW", "ALAW", "FLOAT"})


class PromptError(ValueError):
    """An upload we refuse; the message says what to change."""


@dataclass(frozen=True)
class PromptFile:
    name: str
    sample_rate: int
    duration_seconds: float
    sha256: str
    size: int


def validate(name: str, data: bytes) -> PromptFile:
    if not NAME.match(name):
        raise PromptError("name: letters, digits, '.', '_' and '-', ending in .wav (max 100)")
    if len(data) > MAX_BYTES:
        raise PromptError(f"file is larger than {MAX_BYTES // (1024 * 1024)} MiB")
    try:
        info = soundfile.info(io.BytesIO(data))
    except (RuntimeError, soundfile.LibsndfileError):
        raise PromptError("not a readable WAV file") from None
    if info.format != "WAV":
        raise PromptError(f"format {info.format}: upload a WAV file")
    if info.subtype not in SUBTYPES:
        raise PromptError(f"WAV encoding {info.subtype}: use 16-bit PCM, µ-law or A-law")
    if info.channels != 1:
        raise PromptError(f"{info.channels} channels: upload mono audio")
    if info.samplerate not in SAMPLE_RATES:
        raise PromptError(f"sample rate {info.samplerate} Hz: use 8000 or 16000 Hz")
    if not MIN_SECONDS <= info.duration <= MAX_SECONDS:
        raise PromptError(
            f"length {info.duration:.1f} s: prompts must last {MIN_SECONDS}-{MAX_SECONDS:.0f} s"
        )
    return PromptFile(
        name=name,
        sample_rate=int(info.samplerate),
        duration_seconds=round(float(info.duration), 3),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


class PromptLibrary:
    """Per-tenant prompt files under one root; names are validated before any path is built."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, tenant_id: str) -> Path:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{1,62}", tenant_id):
            raise PromptError("bad tenant id")
        return self.root / tenant_id

    def path(self, tenant_id: str, name: str) -> Path:
        if not NAME.match(name):
            raise PromptError("bad prompt name")
        return self._dir(tenant_id) / name

    def save(self, tenant_id: str, name: str, data: bytes) -> PromptFile:
        meta = validate(name, data)
        folder = self._dir(tenant_id)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return meta

    def list(self, tenant_id: str) -> list[PromptFile]:
        folder = self._dir(tenant_id)
        if not folder.is_dir():
            return []
        return [validate(p.name, p.read_bytes()) for p in sorted(folder.glob("*.wav"))]

    def delete(self, tenant_id: str, name: str) -> bool:
        path = self.path(tenant_id, name)
        if not path.exists():
            return False
        path.unlink()
        return True
