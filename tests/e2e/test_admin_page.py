"""The tenant admin page in a real (headless Debian) Chromium: a tenant admin changes settings."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import async_playwright
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voicegw.api.app import create_app
from voicegw.store import migrate, tenants, tokens
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import TenantSettings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]  # fmt: skip

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed"),
]


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await migrate.upgrade(engine)
    yield session_factory(engine)
    await engine.dispose()


async def test_tenant_admin_changes_recording_mode_and_sees_field_errors(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    async with sessions() as s, s.begin():
        await tenants.create_tenant(
            s, actor="test", tenant_id="acme", name="Acme", settings=TenantSettings(region="eu")
        )
        _, secret = await tokens.create_token(s, role="tenant_admin", tenant_id="acme")
    server = TestServer(create_app(sessions, tmp_path / "var"), host="127.0.0.1")
    await server.start_server()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = await browser.new_page()
            await page.goto(str(server.make_url("/admin/")))
            await page.fill("#token", secret)
            await page.click("#signin button[type=submit]")
            await page.wait_for_selector("#app:not([hidden])")
            assert await page.input_value("select[name=recording_mode]") == "off"
            await page.select_option("select[name=recording_mode]", "opt_in")
            await page.fill("input[name='retention.recordings_days']", "30")
            await page.fill("input[name=all_party_consent_jurisdictions]", "DE, US-CA")
            await page.click("#settings button[type=submit]")
            await page.wait_for_function(
                "document.querySelector('#status').textContent === 'saved'"
            )
            # The audit trail below the form shows the change.
            await page.wait_for_selector("#audit tbody td:text-is('tenant.settings.update')")

            # The browser checks ranges itself; the server's verdict on the rest is shown
            # next to the field it names.
            field = "input[name=all_party_consent_jurisdictions]"
            await page.fill(field, "California")
            await page.click("#settings button[type=submit]")
            await page.wait_for_selector("#status.error")
            assert "all_party_consent_jurisdictions" in await page.inner_text("#status")
            assert await page.get_attribute(field, "class") == "invalid"
            await page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
            await browser.close()
    finally:
        await server.close()

    async with sessions() as s:
        tenant = await tenants.get_tenant(s, "acme")
        assert tenant is not None
        stored = tenants.tenant_settings(tenant)
    assert stored.recording_mode == "opt_in"
    assert stored.retention.recordings_days == 30
    assert stored.all_party_consent_jurisdictions == ("DE", "US-CA")
