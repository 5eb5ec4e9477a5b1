"""The voicegw command: help everywhere, audited changes, errors that say what to fix."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voicegw.cli import app
from voicegw.store import migrate

runner = CliRunner()


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import os

    for key in [k for k in os.environ if k.startswith("VOICEGW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("VOICEGW_STORAGE__DATA_DIR", str(tmp_path / "var"))
    return tmp_path / "var"


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["db"],
        ["db", "upgrade"],
        ["tenant"],
        ["tenant", "create"],
        ["tenant", "list"],
        ["tenant", "show"],
        ["tenant", "set"],
        ["token"],
        ["token", "create"],
        ["token", "revoke"],
        ["audit"],
        ["audit", "verify"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    code, out, _ = run(*command, "--help")
    assert code == 0
    assert "Usage" in out


def test_db_upgrade_reports_revision() -> None:
    code, out, _ = run("db", "upgrade")
    assert code == 0
    assert f"database at revision {migrate.head_revision()}" in out


def test_tenant_lifecycle_is_audited(data_dir: Path) -> None:
    assert run("tenant", "create", "acme", "--name", "Acme", "--region", "eu")[0] == 0
    code, out, _ = run(
        "tenant",
        "set",
        "acme",
        "recording_mode=opt_out",
        "retention.recordings_days=30",
        'all_party_consent_jurisdictions=["DE","US-CA"]',
    )
    assert code == 0, out
    code, out, _ = run("tenant", "show", "acme")
    assert '"recording_mode": "opt_out"' in out
    assert '"recordings_days": 30' in out
    code, out, _ = run("tenant", "list")
    assert "acme" in out and "eu" in out
    db = sqlite3.connect(data_dir / "voicegw.db")
    actions = [r[0] for r in db.execute("SELECT action FROM audit_events ORDER BY seq")]
    assert actions == ["tenant.create", "tenant.settings.update"]
    actor = db.execute("SELECT actor FROM audit_events WHERE seq = 2").fetchone()[0]
    assert actor.startswith("cli:")


def test_bad_setting_names_the_key() -> None:
    run("tenant", "create", "acme")
    code, _, err = run("tenant", "set", "acme", "retention.recordings_days=0")
    assert code == 1
    assert "retention.recordings_days" in err
    assert "greater than or equal to 1" in err
    code, _, err = run("tenant", "set", "acme", "recording_mode")
    assert "expected KEY=VALUE" in err


def test_unknown_region_lists_the_allowed_ones() -> None:
    code, _, err = run("tenant", "create", "acme", "--region", "mars")
    assert code == 1
    assert "allowed:" in err and "eu" in err


def test_bad_config_file_stops_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nport = 0\n")
    code, _, err = run("db", "upgrade", "--config", str(bad))
    assert code == 2
    assert "http.port" in err and str(bad) in err


def test_token_create_writes_0600_file_and_revokes(tmp_path: Path) -> None:
    run("tenant", "create", "acme")
    path = tmp_path / "tok"
    code, out, _ = run(
        "token", "create", "--role", "tenant_admin", "--tenant", "acme", "--output", str(path)
    )
    assert code == 0
    assert path.stat().st_mode & 0o777 == 0o600
    secret = path.read_text().strip()
    assert secret.startswith("vgw_")
    assert secret not in out
    token_id = out.split()[1]
    code, out, _ = run("token", "revoke", token_id)
    assert code == 0 and "revoked" in out
    code, _, err = run("token", "revoke", "nope")
    assert code == 1 and "no token nope" in err


def test_token_role_rules_are_explained() -> None:
    code, _, err = run("token", "create", "--role", "tenant_admin")
    assert code == 1
    assert "every other role needs one" in err


def test_audit_verify_names_the_first_bad_event(data_dir: Path) -> None:
    run("tenant", "create", "acme")
    run("tenant", "set", "acme", "recording_mode=notify")
    run("tenant", "set", "acme", "recording_mode=opt_in")
    code, out, _ = run("audit", "verify")
    assert code == 0 and "3 events" in out
    db = sqlite3.connect(data_dir / "voicegw.db")
    db.execute("UPDATE audit_events SET actor = 'cli:mallory' WHERE seq = 2")
    db.commit()
    code, _, err = run("audit", "verify")
    assert code == 1
    assert "BROKEN at event 2" in err


REGISTRY = Path(__file__).parents[2] / "config" / "subprocessors.toml"


def test_subprocessors_list_prints_the_disclosure_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEGW_PRIVACY__SUBPROCESSORS_FILE", str(REGISTRY))
    code, out, _ = run("subprocessors", "list")
    assert code == 0
    for name in (
        "Microsoft Azure",
        "ElevenLabs",
        "Tencent Cloud",
        "Minimax",
        "Amazon Web Services",
    ):
        assert name in out


def test_subprocessors_list_for_a_tenant_shows_transfers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEGW_PRIVACY__SUBPROCESSORS_FILE", str(REGISTRY))
    run("tenant", "create", "acme", "--region", "eu")
    code, out, _ = run("subprocessors", "list", "--tenant", "acme")
    assert code == 0
    assert "none: no audio or text leaves the gateway" in out
    run("tenant", "set", "acme", 'approved_subprocessors=["tencent","elevenlabs"]')
    code, out, _ = run("subprocessors", "list", "--tenant", "acme")
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert set(lines) == {"tencent", "elevenlabs"}
    assert "cross-border (us)" in lines["elevenlabs"]
    assert "cross-border (sg)" in lines["tencent"]


def test_subprocessors_list_names_a_missing_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOICEGW_PRIVACY__SUBPROCESSORS_FILE", str(tmp_path / "none.toml"))
    code, _, err = run("subprocessors", "list")
    assert code == 1
    assert "privacy.subprocessors_file" in err
