"""The spoken-answer settings through the admin API and ``voicegw tenant set``: clear errors."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from voicegw.api.app import create_app
from voicegw.cli import app as cli
from voicegw.store import tenants, tokens
from voicegw.tenant_settings import TenantSettings


@pytest.fixture
async def admin(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> AsyncIterator[tuple[Any, str]]:
    async with sessions() as s, s.begin():
        await tenants.create_tenant(
            s, actor="test", tenant_id="acme", name="Acme", settings=TenantSettings()
        )
        _, token = await tokens.create_token(s, role="tenant_admin", tenant_id="acme")
    client = TestClient(TestServer(create_app(sessions, tmp_path / "var")))
    await client.start_server()
    yield client, token
    await client.close()


async def patch(admin: tuple[Any, str], body: dict[str, Any]) -> tuple[int, Any]:
    client, token = admin
    async with client.patch(
        "/api/v1/tenants/acme/settings", json=body, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        return resp.status, await resp.json()


async def test_api_sets_the_answer_list_and_floor(admin: tuple[Any, str]) -> None:
    status, body = await patch(
        admin,
        {
            "consent_capture": {
                "methods": ["dtmf", "speech"],
                "spoken_answers": {"en": {"yes": ["Yes I agree"], "no": ["no I do not agree"]}},
                "min_speech_confidence": 0.5,
            }
        },
    )
    assert status == 200, body
    capture = body["consent_capture"]
    assert capture["spoken_answers"] == {
        "en": {"yes": ["yes i agree"], "no": ["no i do not agree"]}
    }
    assert capture["min_speech_confidence"] == 0.5


@pytest.mark.parametrize(
    ("capture", "field", "words"),
    [
        ({"min_speech_confidence": 7}, "settings.consent_capture.min_speech_confidence", "1"),
        (
            {"spoken_answers": {"en": {"yes": ["ok"], "no": ["OK"]}}},
            "settings.consent_capture.spoken_answers.en",
            "both yes and no: ok",
        ),
        (
            {"spoken_answers": {"en": {"yes": ["ok"], "no": ["no"], "maybe": ["hm"]}}},
            "settings.consent_capture.spoken_answers.en.maybe",
            "unknown field",
        ),
    ],
)
async def test_api_refuses_bad_answer_settings_with_400_naming_the_field(
    admin: tuple[Any, str], capture: dict[str, Any], field: str, words: str
) -> None:
    status, body = await patch(admin, {"consent_capture": capture})
    assert status == 400
    assert body["error"]["field"] == field
    assert words in body["error"]["message"]


def test_cli_sets_them_and_says_what_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("VOICEGW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("VOICEGW_STORAGE__DATA_DIR", str(tmp_path / "var"))
    runner = CliRunner()
    assert runner.invoke(cli, ["tenant", "create", "acme"]).exit_code == 0
    ok = runner.invoke(
        cli,
        [
            "tenant",
            "set",
            "acme",
            'consent_capture.spoken_answers={"en": {"yes": ["yes"], "no": ["no"]}}',
            "consent_capture.min_speech_confidence=0.45",
        ],
    )
    assert ok.exit_code == 0, ok.stderr
    assert '"min_speech_confidence": 0.45' in ok.stdout
    bad = runner.invoke(
        cli, ["tenant", "set", "acme", 'consent_capture.spoken_answers.en.yes=["press 1"]']
    )
    assert bad.exit_code == 1
    assert "consent_capture.spoken_answers.en.yes" in bad.stderr
    assert "'press 1' is not an answer phrase" in bad.stderr
