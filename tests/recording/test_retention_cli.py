"""``voicegw retention run``: a dry run lists what is due, changes nothing; a run deletes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.recording.conftest import record_notified_call
from voicegw.cli import app

CREATED = datetime(2020, 5, 1, tzinfo=UTC)  # default retention 90 days: long expired


@pytest.fixture(autouse=True)
def _data_dir(cli_data_dir: Path) -> Path:
    return cli_data_dir


async def record_old_call() -> Path:
    """One finished recording made in 2020, where the CLI looks."""
    return await record_notified_call(
        recording_id="rec-2020", created=CREATED, frames=[(bytes(320), bytes(320))]
    )


def test_retention_run_dry_run_lists_then_run_deletes() -> None:
    path = asyncio.run(record_old_call())
    runner = CliRunner()

    dry = runner.invoke(app, ["retention", "run", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines() == [
        "would delete recording acme/rec-2020 (retain until 2020-07-30T00:00:00+00:00)",
        "would delete 1 object(s)",
    ]
    assert path.exists()

    real = runner.invoke(app, ["retention", "run"])
    assert real.exit_code == 0, real.output
    assert real.stdout.splitlines()[-1] == "deleted 1 object(s)"
    assert not path.exists()

    again = runner.invoke(app, ["retention", "run", "--dry-run"])
    assert again.stdout.splitlines() == ["would delete 0 object(s)"]


def test_retention_help() -> None:
    result = CliRunner().invoke(app, ["retention", "run", "--help"])
    assert result.exit_code == 0 and "--dry-run" in result.stdout
