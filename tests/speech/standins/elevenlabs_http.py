"""A local stand-in for the ElevenLabs streaming text-to-speech endpoint.

``POST /v1/text-to-speech/{voice_id}/stream?output_format=...`` with an
``xi-api-key`` header and a JSON body ``{"text", "model_id"}``, answered with a
chunked body of real speech: the text synthesised by the on-node eSpeak NG engine
at the requested rate, µ-law encoded for ``ulaw_8000``. Every request is kept in
:attr:`ElevenLabsStandIn.log`.

Failure modes: ``fail_status`` answers every request with that HTTP status and a
JSON error body; ``drop_after_chunks`` sends that many chunks and then cuts the
connection mid-body, the way an upstream reset looks to the client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from voicegw.media.g711 import ulaw_encode
from voicegw.tts.espeak_local import EspeakTts

#: output_format → (sample rate, encoder from 16-bit PCM)
FORMATS: dict[str, tuple[int, Any]] = {
    "ulaw_8000": (8000, ulaw_encode),
    "pcm_8000": (8000, bytes),
    "pcm_16000": (16000, bytes),
    "pcm_22050": (22050, bytes),
    "pcm_24000": (24000, bytes),
}


@dataclass(frozen=True)
class TtsRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


class ElevenLabsStandIn:
    """``async with`` it, then point the SDK's ``base_url`` at :attr:`base_url`."""

    def __init__(
        self,
        *,
        chunk_bytes: int = 1600,
        fail_status: int | None = None,
        drop_after_chunks: int | None = None,
    ) -> None:
        self.chunk_bytes = chunk_bytes
        self.fail_status = fail_status
        self.drop_after_chunks = drop_after_chunks
        self.log: list[TtsRequest] = []
        self.chunks_sent = 0
        self.bodies: list[bytes] = []  # the whole audio body generated for each request
        self.disconnected = asyncio.Event()  # a client went away before the body ended
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ElevenLabsStandIn:
        app = web.Application()
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.log.append(TtsRequest(request.method, request.path, dict(request.query),
                                   dict(request.headers), body))  # fmt: skip
        if "xi-api-key" not in request.headers:
            return web.json_response({"detail": {"status": "invalid_api_key"}}, status=401)
        if self.fail_status is not None:
            return web.json_response({"detail": {"status": "error"}}, status=self.fail_status)
        output_format = request.query.get("output_format", "mp3_44100_128")
        if output_format not in FORMATS:
            return web.json_response({"detail": {"status": "invalid_output_format"}}, status=422)
        rate, encode = FORMATS[output_format]
        audio = encode(await EspeakTts().synthesize(body["text"], sample_rate=rate).read_all())
        self.bodies.append(audio)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for n, i in enumerate(range(0, len(audio), self.chunk_bytes)):
                if self.drop_after_chunks is not None and n >= self.drop_after_chunks:
                    assert request.transport is not None
                    request.transport.close()  # mid-body: the chunked reply never ends
                    return response
                await response.write(audio[i : i + self.chunk_bytes])
                self.chunks_sent += 1
                await asyncio.sleep(0.005)  # paced, like audio generated as it streams
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response
