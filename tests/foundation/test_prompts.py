"""Prompt audio uploads are validated, tenant-scoped and audited; the admin page is served."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from tests.foundation.conftest import World, auth, call


def wav(seconds: float = 2.0, rate: int = 8000, channels: int = 1, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    buf = io.BytesIO()
    soundfile.write(buf, data, rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


async def upload(
    world: World, token: str, name: str, body: bytes, tenant: str = "tenant-a"
) -> tuple[int, dict]:  # type: ignore[type-arg]
    path = f"/api/v1/tenants/{tenant}/prompts/{name}"
    async with world.client.put(path, data=body, headers=auth(token)) as resp:
        return resp.status, await resp.json()


async def test_valid_prompt_is_stored_listed_and_audited(world: World) -> None:
    status, meta = await upload(world, world.admin_a, "consent-en.wav", wav(2.0))
    assert status == 201
    assert meta["duration_seconds"] == 2.0
    assert meta["sample_rate"] == 8000
    assert len(meta["sha256"]) == 64
    _, listing = await call(world, "GET", "/api/v1/tenants/tenant-a/prompts", world.supervisor_a)
    assert [p["name"] for p in listing["prompts"]] == ["consent-en.wav"]
    _, events = await call(world, "GET", "/api/v1/tenants/tenant-a/audit", world.admin_a)
    assert events["events"][-1]["action"] == "tenant.prompt.upload"
    assert meta["sha256"] in events["events"][-1]["details"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"RIFF....not audio", "not a readable WAV file"),
        (wav(2.0, channels=2), "upload mono audio"),
        (wav(61.0), "prompts must last"),
        (wav(0.2), "prompts must last"),
        (wav(2.0, rate=11025), "sample rate 11025"),
        (wav(2.0, fmt="FLAC"), "upload a WAV file"),
    ],
    ids=["garbage", "stereo", "too-long", "too-short", "odd-rate", "flac"],
)
async def test_bad_prompt_files_are_refused_with_the_reason(
    world: World, body: bytes, message: str
) -> None:
    status, err = await upload(world, world.admin_a, "p.wav", body)
    assert status == 400
    assert message in err["error"]["message"]
    _, listing = await call(world, "GET", "/api/v1/tenants/tenant-a/prompts", world.admin_a)
    assert listing["prompts"] == []


@pytest.mark.parametrize("name", ["p.mp3", ".hidden.wav", "a%2F..%2Fb.wav"])
async def test_bad_prompt_names_are_refused(world: World, name: str) -> None:
    status, _ = await upload(world, world.admin_a, name, wav())
    assert status in (400, 404)


async def test_other_tenants_prompts_are_invisible(world: World) -> None:
    assert (await upload(world, world.admin_b, "b.wav", wav(), tenant="tenant-b"))[0] == 201
    status, _ = await upload(world, world.admin_a, "x.wav", wav(), tenant="tenant-b")
    assert status == 404
    status, _ = await call(world, "GET", "/api/v1/tenants/tenant-b/prompts", world.admin_a)
    assert status == 404
    status, _ = await call(world, "DELETE", "/api/v1/tenants/tenant-b/prompts/b.wav", world.admin_a)
    assert status == 404
    _, listing = await call(world, "GET", "/api/v1/tenants/tenant-b/prompts", world.admin_b)
    assert [p["name"] for p in listing["prompts"]] == ["b.wav"]


async def test_admin_page_is_served_without_a_token(world: World) -> None:
    async with world.client.get("/admin/") as resp:
        assert resp.status == 200
        assert "voicegw tenant admin" in await resp.text()
    async with world.client.get("/admin/admin.js") as resp:
        assert resp.status == 200
