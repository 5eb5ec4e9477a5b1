"""A local stand-in for Azure AI Speech recognition, speaking Microsoft's USP protocol.

The real Speech SDK connects to it with ``SpeechConfig(host="ws://127.0.0.1:PORT")``.
It accepts the WebSocket upgrade on ``/speech/recognition/{mode}/cognitiveservices/v1``
with the ``USP`` subprotocol, reads the client's text frames (``speech.config``,
``speech.context``, ``telemetry``) and binary audio frames (2-byte big-endian
header length, headers, then a RIFF header and PCM on the first frame of a turn;
an empty payload ends the audio), and answers the way the service does:
``turn.start``, ``speech.startDetected``, ``speech.hypothesis``, ``speech.phrase``,
``speech.endDetected``, ``turn.end``.

Synthesis (``/cognitiveservices/websocket/v1``): the client sends
``synthesis.context`` (the output format) and ``ssml``; the stand-in answers
``turn.start``, binary ``audio`` frames of real speech (the SSML's text spoken by the
on-node eSpeak NG engine at the requested rate) and ``turn.end``.

What it "recognises" is scripted: each stretch of speech it hears (10 ms frames
above an energy threshold, ended by ``end_silence`` of quiet or by the end of the
audio) is answered with the next phrase of ``script``. Offsets and durations are
those of the real audio received, in 100 ns ticks, so timing is testable, and
every frame is kept in :attr:`UspStandIn.log` so tests can assert what was sent.

``fail_after_bytes``: once that much PCM has arrived (recognition) or been sent
(synthesis) the stand-in closes the socket with 1011 (internal error) and stops
listening, the way a failing region goes away.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from voicegw.tts.espeak_local import EspeakTts

TICKS_PER_SECOND = 10_000_000
RECOGNITION_PATH = "/speech/recognition/{mode}/cognitiveservices/v1"
SYNTHESIS_PATH = "/cognitiveservices/websocket/v1"
#: synthesis.context outputFormat → sample rate of the raw 16-bit PCM it names
SYNTHESIS_RATES = {"raw-8khz-16bit-mono-pcm": 8000, "raw-16khz-16bit-mono-pcm": 16000,
                   "raw-22050hz-16bit-mono-pcm": 22050, "raw-24khz-16bit-mono-pcm": 24000,
                   "raw-48khz-16bit-mono-pcm": 48000}  # fmt: skip
_SSML_NS = "{http://www.w3.org/2001/10/synthesis}"


@dataclass(frozen=True)
class Upgrade:
    """One WebSocket connection the client opened."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass(frozen=True)
class UspMessage:
    """One frame the client sent; ``body`` is the parsed JSON of text frames."""

    connection: int
    path: str
    request_id: str | None
    headers: dict[str, str]
    body: Any = None
    pcm_bytes: int = 0  # audio frames: PCM carried, RIFF header excluded


def usp_text(path: str, request_id: str, body: dict[str, Any]) -> str:
    """A service-to-client USP text frame."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return (
        f"X-RequestId:{request_id}\r\nX-Timestamp:{stamp}\r\n"
        f"Content-Type:application/json; charset=utf-8\r\nPath:{path}\r\n\r\n" + json.dumps(body)
    )


def _headers(block: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in block.split("\r\n") if ":" in line)
    return {name.strip(): value.strip() for name, value in pairs}


def _lexical(text: str) -> str:
    """The service's lexical form: lower-case words, no punctuation."""
    return " ".join(w.strip(".,?!;:").lower() for w in text.split())


def _split_riff(payload: bytes) -> tuple[int | None, bytes]:
    """(sample rate, PCM) of a first audio payload that starts with a WAV header."""
    if not payload.startswith(b"RIFF"):
        return None, payload
    rate, pos = None, 12
    while pos + 8 <= len(payload):
        chunk, size = payload[pos : pos + 4], struct.unpack_from("<I", payload, pos + 4)[0]
        if chunk == b"fmt ":
            rate = struct.unpack_from("<I", payload, pos + 12)[0]
        if chunk == b"data":
            return rate, payload[pos + 8 :]
        pos += 8 + size
    return rate, b""


@dataclass
class _Turn:
    """One request id: the audio heard so far and where speech stands in it."""

    request_id: str
    detailed: bool
    rate: int = 16_000
    samples: int = 0
    pending: bytes = b""
    started: bool = False
    speech_start: int | None = None  # sample index
    last_voiced: int = 0
    hypotheses: int = 0
    next_hypothesis: int = 0
    phrases: int = 0
    acked: int = 0  # samples covered by the phrases sent


class UspStandIn:
    """The stand-in server; ``async with`` it, then point the SDK at :attr:`host`."""

    def __init__(
        self,
        script: list[str],
        *,
        confidence: float = 0.92,
        threshold: float = 300.0,
        end_silence: float = 0.4,
        hypothesis_every: float = 0.3,
        fail_after_bytes: int | None = None,
        chunk_seconds: float = 0.1,
    ) -> None:
        self.script = list(script)
        self.confidence = confidence
        self.threshold = threshold
        self.end_silence = end_silence
        self.hypothesis_every = hypothesis_every
        self.fail_after_bytes = fail_after_bytes
        self.chunk_seconds = chunk_seconds
        self.spoken: list[tuple[str, str]] = []  # (voice, text) of each ssml request
        self.synthesized: list[bytes] = []  # the whole PCM generated for each ssml request
        self.audio_bytes_sent = 0
        self.disconnected = asyncio.Event()  # a synthesis client went away mid-utterance
        self.upgrades: list[Upgrade] = []
        self.log: list[UspMessage] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []  # (path, body) answered
        self.audio_bytes = 0
        self.audio_seconds = 0.0
        self.sample_rates: list[int] = []  # from the RIFF header of each turn's audio
        self._said = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0

    @property
    def host(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        return [m.path for m in self.log]

    async def __aenter__(self) -> UspStandIn:
        app = web.Application()
        app.router.add_get(RECOGNITION_PATH, self._handle)
        app.router.add_get(SYNTHESIS_PATH, self._handle_synthesis)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await self._site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        if request.match_info["mode"] not in ("interactive", "conversation", "dictation"):
            raise web.HTTPNotFound()
        self.upgrades.append(Upgrade(request.path, dict(request.query), dict(request.headers)))
        connection = len(self.upgrades)
        detailed = request.query.get("format") == "detailed"
        ws = web.WebSocketResponse(protocols=("USP",))
        await ws.prepare(request)
        turns: dict[str, _Turn] = {}
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                head, _, body = msg.data.partition("\r\n\r\n")
                headers = _headers(head)
                self.log.append(
                    UspMessage(connection, headers.get("Path", ""), headers.get("X-RequestId"),
                               headers, json.loads(body) if body else None)
                )  # fmt: skip
            elif msg.type == WSMsgType.BINARY:
                (length,) = struct.unpack_from(">H", msg.data)
                headers = _headers(msg.data[2 : 2 + length].decode())
                request_id = headers.get("X-RequestId", "")
                turn = turns.setdefault(request_id, _Turn(request_id, detailed))
                rate, pcm = _split_riff(msg.data[2 + length :])
                if rate is not None:
                    turn.rate = rate
                    self.sample_rates.append(rate)
                self.log.append(
                    UspMessage(connection, headers.get("Path", ""), request_id, headers,
                               pcm_bytes=len(pcm))
                )  # fmt: skip
                self.audio_bytes += len(pcm)
                self.audio_seconds += len(pcm) / 2 / turn.rate
                if self.fail_after_bytes is not None and self.audio_bytes >= self.fail_after_bytes:
                    await self._fail(ws)
                    break
                end_of_audio = len(msg.data) == 2 + length
                for path, answer in self._hear(turn, pcm, end_of_audio):
                    self.sent.append((path, answer))
                    await ws.send_str(usp_text(path, request_id, answer))
        return ws

    async def _fail(self, ws: web.WebSocketResponse) -> None:
        await ws.close(code=1011, message=b"Internal service error")
        if self._site is not None:
            await self._site.stop()

    async def _handle_synthesis(self, request: web.Request) -> web.WebSocketResponse:
        self.upgrades.append(Upgrade(request.path, dict(request.query), dict(request.headers)))
        connection = len(self.upgrades)
        ws = web.WebSocketResponse(protocols=("USP",))
        await ws.prepare(request)
        formats: dict[str, str] = {}
        speaking: asyncio.Task[None] | None = None
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            head, _, body = msg.data.partition("\r\n\r\n")
            headers = _headers(head)
            path, request_id = headers.get("Path", ""), headers.get("X-RequestId", "")
            parsed: Any = body if path == "ssml" else (json.loads(body) if body else None)
            self.log.append(UspMessage(connection, path, request_id, headers, parsed))
            if path == "synthesis.context":
                formats[request_id] = parsed["synthesis"]["audio"]["outputFormat"]
            elif path == "ssml":
                rate = SYNTHESIS_RATES[formats.get(request_id, "raw-16khz-16bit-mono-pcm")]
                speaking = asyncio.ensure_future(self._speak(ws, request_id, body, rate))
        if speaking is not None and not speaking.done():
            self.disconnected.set()
            speaking.cancel()
        return ws

    async def _speak(
        self, ws: web.WebSocketResponse, request_id: str, ssml: str, rate: int
    ) -> None:
        root = ET.fromstring(ssml)  # noqa: S314 - the SDK's own SSML, in a test stand-in
        voice = root.find(f"{_SSML_NS}voice")
        text = "".join(root.itertext()).strip()
        self.spoken.append(("" if voice is None else voice.get("name", ""), text))
        pcm = await EspeakTts().synthesize(text, sample_rate=rate).read_all()
        self.synthesized.append(pcm)
        start = {"context": {"serviceTag": "standin"}}
        await ws.send_str(usp_text("turn.start", request_id, start))
        head = f"X-RequestId:{request_id}\r\nX-StreamId:1\r\nPath:audio\r\n".encode()
        step = int(self.chunk_seconds * rate) * 2
        for i in range(0, len(pcm), step):
            chunk = pcm[i : i + step]
            self.audio_bytes_sent += len(chunk)
            if self.fail_after_bytes is not None and self.audio_bytes_sent > self.fail_after_bytes:
                await self._fail(ws)
                return
            await ws.send_bytes(struct.pack(">H", len(head)) + head + chunk)
            await asyncio.sleep(self.chunk_seconds / 4)  # generated faster than real time
        await ws.send_str(usp_text("turn.end", request_id, {}))

    # --- the scripted recogniser --------------------------------------------

    def _hear(self, turn: _Turn, pcm: bytes, end: bool) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        if not turn.started and (pcm or end):
            turn.started = True
            out.append(("turn.start", {"context": {"serviceTag": "standin"}}))
        turn.pending += pcm
        frame = turn.rate // 100 * 2
        while len(turn.pending) >= frame:
            chunk, turn.pending = turn.pending[:frame], turn.pending[frame:]
            samples = np.frombuffer(chunk, dtype=np.int16).astype(np.float64)
            voiced = math.sqrt(float(np.mean(samples**2))) > self.threshold
            turn.samples += len(samples)
            out += self._step(turn, voiced)
        if end:
            if turn.speech_start is not None:
                out += self._phrase(turn)
            if turn.acked < turn.samples:
                # Audio no phrase covered is answered too, or the SDK resends it in a new turn.
                status = "NoMatch" if turn.phrases else "InitialSilenceTimeout"
                tail = {"RecognitionStatus": status, "Offset": self._ticks(turn, turn.acked),
                        "Duration": self._ticks(turn, turn.samples - turn.acked)}  # fmt: skip
                out.append(("speech.phrase", tail))
            out.append(("turn.end", {}))
        return out

    def _step(self, turn: _Turn, voiced: bool) -> list[tuple[str, dict[str, Any]]]:
        now = turn.samples  # end of the frame just heard
        quiet_needed = self.end_silence * turn.rate
        if voiced:
            turn.last_voiced = now
            if turn.speech_start is None:
                turn.speech_start = now - turn.rate // 100
                turn.hypotheses = 0
                turn.next_hypothesis = now + int(self.hypothesis_every * turn.rate)
                return [("speech.startDetected", {"Offset": self._ticks(turn, turn.speech_start)})]
            if now >= turn.next_hypothesis:
                turn.next_hypothesis = now + int(self.hypothesis_every * turn.rate)
                return [self._hypothesis(turn)]
        elif turn.speech_start is not None and now - turn.last_voiced >= quiet_needed:
            return self._phrase(turn)
        return []

    def _upcoming(self) -> str | None:
        return self.script[self._said] if self._said < len(self.script) else None

    def _hypothesis(self, turn: _Turn) -> tuple[str, dict[str, Any]]:
        assert turn.speech_start is not None
        turn.hypotheses += 1
        words = _lexical(self._upcoming() or "").split()
        text = " ".join(words[: min(turn.hypotheses, max(len(words) - 1, 1))])
        offset = self._ticks(turn, turn.speech_start)
        duration = self._ticks(turn, turn.last_voiced - turn.speech_start)
        return "speech.hypothesis", {"Text": text, "Offset": offset, "Duration": duration}

    def _phrase(self, turn: _Turn) -> list[tuple[str, dict[str, Any]]]:
        assert turn.speech_start is not None
        offset = self._ticks(turn, turn.speech_start)
        duration = self._ticks(turn, turn.last_voiced - turn.speech_start)
        end = {"Offset": offset + duration}
        turn.acked = turn.last_voiced
        turn.speech_start = None
        turn.phrases += 1
        text = self._upcoming()
        if text is None:
            nothing = {"RecognitionStatus": "NoMatch", "Offset": offset, "Duration": duration}
            return [("speech.phrase", nothing), ("speech.endDetected", end)]
        self._said += 1
        phrase: dict[str, Any] = {"RecognitionStatus": "Success", "Offset": offset,
                                  "Duration": duration}  # fmt: skip
        if turn.detailed:
            lexical = _lexical(text)
            phrase["NBest"] = [{"Confidence": self.confidence, "Lexical": lexical, "ITN": lexical,
                                "MaskedITN": lexical, "Display": text}]  # fmt: skip
        else:
            phrase["DisplayText"] = text
        return [("speech.phrase", phrase), ("speech.endDetected", end)]

    @staticmethod
    def _ticks(turn: _Turn, samples: int) -> int:
        return samples * TICKS_PER_SECOND // turn.rate
