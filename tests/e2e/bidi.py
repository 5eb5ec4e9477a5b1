"""Headless Firefox driven over WebDriver BiDi, Firefox's built-in remote protocol.

Debian ships no geckodriver and nothing may be downloaded, so the tests speak
BiDi themselves: Firefox listens on ``--remote-debugging-port`` and a plain
WebSocket at ``/session`` takes JSON commands (``session.new``,
``browsingContext.navigate``, ``script.evaluate``). Only what the softphone
tests need is here: open a page, run an expression, wait until one is true.

The profile's ``user.js`` (:data:`PREFS`) sets what a headless, offline
machine needs, each found by trying:

* a fake microphone (a 1 kHz tone) and microphone permission granted by
  default. Not ``media.navigator.permission.disabled``: with the prompt
  disabled no permission exists, and without one Firefox gathers ICE
  candidates on the default-route addresses only - none at all in a namespace
  with only loopback;
* loopback ICE candidates (Firefox leaves them out by default), no mDNS names;
* audio without a user gesture, and a mock audio backend: with no sound device
  an AudioContext never leaves "suspended", so the page could not measure;
* no background services that would try to reach the internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

FIREFOX = os.environ.get("VOICEGW_FIREFOX", "/usr/bin/firefox-esr")

PREFS = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": False,
    "permissions.default.microphone": 1,
    "permissions.default.camera": 1,
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.default_address_only": False,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "media.autoplay.block-webaudio": False,
    # No sound device here: a mock audio backend lets the page run WebAudio.
    "media.cubeb.force_mock_context": True,
    "remote.active-protocols": 1,  # WebDriver BiDi only
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "app.update.auto": False,
    "app.normandy.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "extensions.update.enabled": False,
    "services.settings.server": "http://127.0.0.1:9/",
}

_LISTENING = re.compile(rb"WebDriver BiDi listening on (ws://\S+)")


class BidiError(Exception):
    """Firefox answered a command with an error, or a script threw."""


def write_profile(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in PREFS.items()]
    (directory / "user.js").write_text("\n".join(lines) + "\n")
    return directory


class Firefox:
    """One headless Firefox and its BiDi session, with one browsing context (tab)."""

    def __init__(self, process: asyncio.subprocess.Process, http: aiohttp.ClientSession) -> None:
        self.process = process
        self._http = http
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self.context = ""

    async def _connect(self, url: str) -> None:
        self._ws = await self._http.ws_connect(url + "/session")
        await self.command("session.new", {"capabilities": {}})
        tree = await self.command("browsingContext.getTree", {})
        self.context = tree["contexts"][0]["context"]

    async def command(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        number = next(self._ids)
        await self._ws.send_json({"id": number, "method": method, "params": params})
        while True:
            message = await self._ws.receive_json(timeout=30)
            if message.get("id") != number:
                continue  # an event; nothing here subscribes to any
            if message.get("type") == "error":
                raise BidiError(f"{method}: {message.get('error')}: {message.get('message')}")
            result: dict[str, Any] = message["result"]
            return result

    async def goto(self, url: str) -> None:
        await self.command(
            "browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"}
        )

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = await self.command(
            "script.evaluate",
            {
                "expression": expression,
                "target": {"context": self.context},
                "awaitPromise": True,
                "resultOwnership": "none",
            },
        )
        if result.get("type") == "exception":
            details = result.get("exceptionDetails", {})
            raise BidiError(f"script threw: {details.get('text')}")
        return _value(result["result"])

    async def wait_for(self, expression: str, within: float = 10.0) -> Any:
        """Poll ``expression`` until it is truthy; its value, or AssertionError naming it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"not true within {within} s: {expression}")
            await asyncio.sleep(0.1)


def _value(remote: dict[str, Any]) -> Any:
    """A BiDi remote value of a primitive, an array or a plain object, as Python."""
    kind = remote["type"]
    if kind in ("undefined", "null"):
        return None
    if kind in ("string", "number", "boolean"):
        return remote["value"]
    if kind == "array":
        return [_value(v) for v in remote.get("value", [])]
    if kind == "object":
        return {k: _value(v) for k, v in remote.get("value", [])}
    raise BidiError(f"cannot read a {kind} value back from the page")


@contextlib.asynccontextmanager
async def firefox(profile: Path, *, startup: float = 30.0) -> AsyncIterator[Firefox]:
    """Start headless Firefox on a free port with ``profile``; stop it on exit."""
    write_profile(profile)
    process = await asyncio.create_subprocess_exec(
        FIREFOX,
        "--headless",
        "--no-remote",
        "--profile",
        str(profile),
        "--remote-debugging-port=0",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    drain: asyncio.Task[None] | None = None
    try:
        assert process.stderr is not None
        url = await asyncio.wait_for(_listening_url(process.stderr), startup)
        # Keep reading stderr so a chatty Firefox never blocks on a full pipe.
        drain = asyncio.create_task(_drain(process.stderr))
        async with aiohttp.ClientSession() as http:
            browser = Firefox(process, http)
            await browser._connect(url)
            yield browser
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


async def _listening_url(stderr: asyncio.StreamReader) -> str:
    while line := await stderr.readline():
        found = _LISTENING.search(line)
        if found:
            return found.group(1).decode()
    raise BidiError("Firefox exited before WebDriver BiDi listened")


async def _drain(stderr: asyncio.StreamReader) -> None:
    while await stderr.read(65536):
        pass
