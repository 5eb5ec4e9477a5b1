"""`voicegw serve` as a real process: first start bootstraps, the token works, logs stay clean."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from tests.conftest import free_port


async def sip_options(host: str, port: int) -> bytes:
    request = (
        f"OPTIONS sip:ping@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-serve-test;rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:probe@example.com>;tag=1\r\n"
        f"To: <sip:ping@{host}>\r\nCall-ID: serve-test\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        await loop.sock_sendto(sock, request, (host, port))
        async with asyncio.timeout(5):
            return await loop.sock_recv(sock, 65536)


async def test_first_start_creates_demo_tenant_and_private_operator_token(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEGW_")}
    sip_port = free_port(socket.SOCK_DGRAM)
    env |= {
        "VOICEGW_HTTP__PORT": str(port),
        "VOICEGW_SIP__UDP_PORT": str(sip_port),
        "VOICEGW_SIP__TCP_PORT": str(free_port()),
        "VOICEGW_STORAGE__DATA_DIR": str(tmp_path / "var"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicegw.cli",
        "serve",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        banner = b""
        async with asyncio.timeout(30):
            while b"curl" not in banner:
                line = await proc.stdout.readline()
                assert line, (banner, await proc.stderr.read())
                banner += line
        token_file = tmp_path / "var" / "operator-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert str(token_file) in banner.decode()
        assert token not in banner.decode()

        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://127.0.0.1:{port}/api/v1/tenants",
                headers={"Authorization": f"Bearer {token}"},
            ) as resp,
        ):
            assert resp.status == 200
            assert [t["id"] for t in (await resp.json())["tenants"]] == ["demo"]
        # SIP answers a carrier's OPTIONS keep-alive.
        assert b"SIP/2.0 200 OK" in await sip_options("127.0.0.1", sip_port)
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            code = await proc.wait()
        logs = await proc.stderr.read()
    assert code == 0
    assert b'"event":"server.started"' in logs
    assert token.encode() not in logs
