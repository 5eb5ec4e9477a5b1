"""The ``voicegw`` command."""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from voicegw.config import ConfigError, Settings, load_settings
from voicegw.logs import configure_logging
from voicegw.store import audit, migrate, tenants, tokens
from voicegw.store.db import create_engine, session_factory
from voicegw.tenant_settings import TenantSettings

T = TypeVar("T")

app = typer.Typer(
    help="voicegw: contact-center telephony and voice-AI gateway.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants and their settings.", no_args_is_help=True)
token_app = typer.Typer(help="Admin API bearer tokens.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tenant_app, name="tenant")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML config file (default: $VOICEGW_CONFIG or embedded defaults)."
    ),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def settings_from(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def with_session(config: Path | None, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction on an up-to-date schema."""
    settings = settings_from(config)

    async def run() -> T:
        engine = create_engine(settings.database_url)
        try:
            await migrate.upgrade(engine)
            async with session_factory(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the server on uvloop where it is installed (a dependency off Windows).

    The media path makes one socket call per RTP packet; uvloop's C UDP transport and
    loop relay a packet with about 5 % less CPU than asyncio's
    (``benchmarks/bench_rtp_relay.py --both-ways [--uvloop]``, 17.4 vs 18.2 µs).
    """
    try:
        import uvloop
    except ImportError:  # Windows: uvloop does not build there
        asyncio.run(main)
        return
    uvloop.run(main)


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the gateway (creates the schema, and a demo tenant on an empty database)."""
    from voicegw.server import serve as run_server

    settings = settings_from(config)
    configure_logging(settings.logging.level, settings.logging.format)
    try:
        _run_event_loop(run_server(settings))
    except OSError as exc:
        raise fail(
            f"cannot start: {exc.strerror} ({exc.__class__.__name__}); "
            "is another process using the configured ports?"
        ) from None


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply all schema migrations."""
    settings = settings_from(config)

    async def run() -> str | None:
        engine = create_engine(settings.database_url)
        try:
            await migrate.upgrade(engine)
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    typer.echo(f"database at revision {asyncio.run(run())}")


def _show(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@tenant_app.command("create")
def tenant_create(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id (slug), e.g. acme")],
    name: Annotated[str, typer.Option(help="Display name")] = "",
    region: Annotated[str, typer.Option(help="Home region, e.g. sg, eu, us")] = "sg",
    config: ConfigOption = None,
) -> None:
    """Create a tenant."""
    try:
        settings = TenantSettings(region=region)
    except ValidationError as exc:
        raise fail(f"--region: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None

    async def work(session: AsyncSession) -> dict[str, Any]:
        try:
            t = await tenants.create_tenant(
                session,
                actor=cli_actor(),
                tenant_id=tenant_id,
                name=name or tenant_id,
                settings=settings,
            )
        except (ValueError, tenants.ConflictError) as exc:
            raise fail(str(exc)) from None
        return {"id": t.id, "name": t.name, "region": t.region}

    _show(with_session(config, work))


@tenant_app.command("list")
def tenant_list(config: ConfigOption = None) -> None:
    """List tenants."""

    async def work(session: AsyncSession) -> list[dict[str, str]]:
        return [
            {"id": t.id, "name": t.name, "region": t.region}
            for t in await tenants.list_tenants(session)
        ]

    for row in with_session(config, work):
        typer.echo(f"{row['id']:<24} {row['region']:<4} {row['name']}")


@tenant_app.command("show")
def tenant_show(tenant_id: str, config: ConfigOption = None) -> None:
    """Show a tenant and its settings."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        t = await tenants.get_tenant(session, tenant_id)
        if t is None:
            raise fail(f"no tenant {tenant_id}")
        return {"id": t.id, "name": t.name, "region": t.region, "settings": t.settings}

    _show(with_session(config, work))


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """``a.b=value`` pairs into a nested patch; values are JSON where they parse, else strings."""
    patch: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise fail(
                f"{pair!r}: expected KEY=VALUE, "
                "e.g. recording_mode=opt_in or retention.recordings_days=30"
            )
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = patch
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return patch


@tenant_app.command("set")
def tenant_set(
    tenant_id: str,
    assignments: Annotated[list[str], typer.Argument(help="KEY=VALUE, e.g. recording_mode=opt_in")],
    config: ConfigOption = None,
) -> None:
    """Change tenant settings (audited)."""
    patch = parse_assignments(assignments)

    async def work(session: AsyncSession) -> dict[str, Any]:
        t = await tenants.get_tenant(session, tenant_id)
        if t is None:
            raise fail(f"no tenant {tenant_id}")
        try:
            await tenants.update_settings(session, actor=cli_actor(), tenant=t, patch=patch)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise fail(f"{field}: {err['msg'].removeprefix('Value error, ')}") from None
        except ValueError as exc:
            raise fail(str(exc)) from None
        return t.settings

    _show(with_session(config, work))


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="operator | tenant_admin | supervisor | agent")],
    tenant: Annotated[str | None, typer.Option(help="Tenant id (all roles but operator)")] = None,
    agent: Annotated[int | None, typer.Option(help="Agent id (agent role)")] = None,
    label: Annotated[str | None, typer.Option(help="Free-text label")] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Write the secret to this file (mode 0600) instead of stdout"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Create a bearer token; the secret is shown once."""

    async def work(session: AsyncSession) -> tuple[str, str]:
        if tenant is not None and await tenants.get_tenant(session, tenant) is None:
            raise fail(f"no tenant {tenant}")
        try:
            row, secret = await tokens.create_token(
                session, role=role, tenant_id=tenant, agent_id=agent, label=label
            )
        except ValueError as exc:
            raise fail(str(exc)) from None
        await audit.append(
            session,
            actor=cli_actor(),
            tenant_id=tenant,
            action="token.create",
            target=f"token/{row.id}",
            details={"role": role, "agent_id": agent},
        )
        return row.id, secret

    token_id, secret = with_session(config, work)
    if output is not None:
        from voicegw.bootstrap import write_secret

        write_secret(output, secret)
        typer.echo(f"token {token_id} written to {output}")
    else:
        typer.echo(f"token id: {token_id}", err=True)
        typer.echo(secret)


@token_app.command("revoke")
def token_revoke(token_id: str, config: ConfigOption = None) -> None:
    """Revoke a token by its id."""

    async def work(session: AsyncSession) -> None:
        row = await tokens.revoke_token(session, token_id)
        if row is None:
            raise fail(f"no token {token_id}")
        await audit.append(
            session,
            actor=cli_actor(),
            tenant_id=row.tenant_id,
            action="token.revoke",
            target=f"token/{row.id}",
        )

    with_session(config, work)
    typer.echo(f"token {token_id} revoked")


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None) -> None:
    """Check the audit hash chain; exit 1 naming the first bad event."""
    result = with_session(config, audit.verify)
    if result.ok:
        typer.echo(f"audit log OK: {result.events} events, chain intact")
        return
    raise fail(f"audit log BROKEN at event {result.first_bad_seq}: {result.problem}")


# --- sub-processors --------------------------------------------------------------

subprocessors_app = typer.Typer(
    help="The sub-processor list tenants approve from.", no_args_is_help=True
)
app.add_typer(subprocessors_app, name="subprocessors")


@subprocessors_app.command("list")
def subprocessors_list(
    tenant: Annotated[
        str | None, typer.Option(help="Only this tenant's approved sub-processors, with transfers")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Print the disclosure table (for a tenant's privacy notice with --tenant)."""
    from voicegw.privacy.regions import policy_region
    from voicegw.privacy.subprocessors import SubprocessorConfigError, load_subprocessors

    settings = settings_from(config)
    try:
        registry = load_subprocessors(settings.privacy.subprocessors_file)
    except FileNotFoundError:
        raise fail(
            f"sub-processor list {settings.privacy.subprocessors_file} not found; "
            "set privacy.subprocessors_file"
        ) from None
    except SubprocessorConfigError as exc:
        raise fail(f"{settings.privacy.subprocessors_file}: {exc}") from None
    entries = list(registry.values())
    region: str | None = None
    if tenant is not None:

        async def work(session: AsyncSession) -> TenantSettings:
            row = await tenants.get_tenant(session, tenant)
            if row is None:
                raise fail(f"no tenant {tenant}")
            return tenants.tenant_settings(row)

        chosen = with_session(config, work)
        region = chosen.region
        unknown = [i for i in chosen.approved_subprocessors if i not in registry]
        if unknown:
            typer.echo(f"warning: approved but not in the list: {', '.join(unknown)}", err=True)
        entries = [registry[i] for i in chosen.approved_subprocessors if i in registry]
        typer.echo(f"Sub-processors approved by {tenant} (region {region}):")
    header = f"{'id':<12} {'name':<20} {'locations':<12} {'purposes':<40} data"
    typer.echo(header + ("   transfer" if region else ""))
    for sub in entries:
        line = (
            f"{sub.id:<12} {sub.name:<20} {','.join(sub.locations):<12} "
            f"{','.join(sorted(p.value for p in sub.purposes)):<40} "
            f"{','.join(sorted(d.value for d in sub.data_types))}"
        )
        if region is not None:
            abroad = sorted({policy_region(loc) for loc in sub.locations} - {region})
            line += "   " + (f"cross-border ({','.join(abroad)})" if abroad else "in region")
        typer.echo(line)
    if tenant is not None and not entries:
        typer.echo("(none: no audio or text leaves the gateway for this tenant)")


# --- retention -------------------------------------------------------------------

retention_app = typer.Typer(help="Recording and transcript retention.", no_args_is_help=True)
app.add_typer(retention_app, name="retention")


@retention_app.command("run")
def retention_run(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what is due; delete nothing.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Delete recordings and transcripts past their retention that are not on legal hold."""
    from datetime import UTC, datetime

    from voicegw.recording import retention
    from voicegw.recording.storage import LocalFilesystemStorage

    settings = settings_from(config)

    async def run() -> retention.SweepReport:
        engine = create_engine(settings.database_url)
        try:
            await migrate.upgrade(engine)
            return await retention.sweep(
                session_factory(engine),
                LocalFilesystemStorage(settings.recordings_root),
                now=datetime.now(UTC),
                dry_run=dry_run,
                actor=cli_actor(),
            )
        finally:
            await engine.dispose()

    report = asyncio.run(run())
    verb = "would delete" if report.dry_run else "deleted"
    for item in report.items:
        typer.echo(
            f"{verb} {item.kind.value} {item.tenant_id}/{item.object_id} "
            f"(retain until {item.retain_until.isoformat()})"
        )
    for failure in report.failures:
        typer.echo(
            f"not deleted {failure.item.kind.value} {failure.item.tenant_id}/"
            f"{failure.item.object_id}: {failure.error}; the next run retries it",
            err=True,
        )
    typer.echo(f"{verb} {len(report.items)} object(s)")
    if report.failures:
        raise typer.Exit(1)


# --- recordings ------------------------------------------------------------------

recordings_app = typer.Typer(
    help="Stored call recordings: list, verify, export, legal hold.", no_args_is_help=True
)
app.add_typer(recordings_app, name="recordings")

TenantOption = Annotated[str, typer.Option("--tenant", help="Tenant id")]


async def _recording_row(session: AsyncSession, tenant: str, recording_id: str) -> Any:
    from voicegw.store import recordings as store

    if await tenants.get_tenant(session, tenant) is None:
        raise fail(f"no tenant {tenant}")
    row = await store.get_recording(session, tenant, recording_id)
    if row is None:
        raise fail(f"no recording {recording_id} in tenant {tenant}")
    return row


@recordings_app.command("list")
def recordings_list(
    tenant: TenantOption,
    call_id: Annotated[str | None, typer.Option(help="Only this call's recordings")] = None,
    config: ConfigOption = None,
) -> None:
    """List a tenant's recordings (id, state, duration, retention, legal hold)."""
    from voicegw.store import recordings as store

    async def work(session: AsyncSession) -> list[Any]:
        if await tenants.get_tenant(session, tenant) is None:
            raise fail(f"no tenant {tenant}")
        return list(await store.list_recordings(session, tenant, call_id=call_id))

    rows = with_session(config, work)
    for row in rows:
        seconds = f"{row.duration_seconds:.1f}s" if row.duration_seconds is not None else "?"
        retain = store.as_utc(row.retain_until).date().isoformat()
        hold = "  HOLD" if row.legal_hold else ""
        typer.echo(f"{row.id}  {row.call_id}  {row.state}  {seconds}  retain until {retain}{hold}")
    typer.echo(f"{len(rows)} recording(s)")


@recordings_app.command("verify")
def recordings_verify(
    recording_id: Annotated[str, typer.Argument(help="Recording id")],
    tenant: TenantOption,
    config: ConfigOption = None,
) -> None:
    """Check a stored recording against its metadata and its authentication; exit 1 if not."""
    from voicegw.recording.export import check_stored
    from voicegw.recording.keys import LocalKeyring
    from voicegw.recording.storage import LocalFilesystemStorage

    settings = settings_from(config)

    async def work(session: AsyncSession) -> Any:
        return await _recording_row(session, tenant, recording_id)

    row = with_session(config, work)
    result = check_stored(
        LocalFilesystemStorage(settings.recordings_root), LocalKeyring(settings.key_dir), row
    )
    if result.ok:
        typer.echo(f"recording {recording_id}: {result.describe()}")
        return
    raise fail(f"recording {recording_id} {result.describe()}")


@recordings_app.command("export")
def recordings_export(
    recording_id: Annotated[str, typer.Argument(help="Recording id")],
    tenant: TenantOption,
    output: Annotated[Path, typer.Option(help="WAV file to write (mode 0600)")],
    config: ConfigOption = None,
) -> None:
    """Decrypt a recording to a 2-channel WAV file (audited before a byte is written)."""
    import os

    from voicegw.recording.errors import ContainerError
    from voicegw.recording.export import (
        Export,
        ExportRefused,
        audit_export,
        open_export,
        preamble_of,
    )
    from voicegw.recording.keys import LocalKeyring
    from voicegw.recording.storage import LocalFilesystemStorage

    settings = settings_from(config)
    storage = LocalFilesystemStorage(settings.recordings_root)
    keys = LocalKeyring(settings.key_dir)

    async def work(session: AsyncSession) -> tuple[Any, Export]:
        row = await _recording_row(session, tenant, recording_id)
        try:
            export = await asyncio.to_thread(open_export, storage, keys, row)
        except ExportRefused as exc:
            raise fail(f"recording {recording_id} not exported: {exc.message}") from None
        await audit_export(session, actor=cli_actor(), row=row, export=export, via="cli")
        return row, export

    row, export = with_session(config, work)
    partial = output.with_name(output.name + ".partial")
    try:
        preamble, _ = preamble_of(row, export)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(preamble)
            for block in export.chunks():
                out.write(block)
        os.replace(partial, output)
    except (ContainerError, ExportRefused) as exc:
        partial.unlink(missing_ok=True)
        raise fail(f"recording {recording_id} not exported: {exc}") from None
    finally:
        export.close()
    typer.echo(
        f"exported recording {recording_id} to {output} "
        f"({row.channels} channels, {row.sample_rate} Hz, {export.plaintext_bytes} bytes of audio"
        f"{'' if export.complete else ', INCOMPLETE: readable part only'})"
    )


@recordings_app.command("hold")
def recordings_hold(
    recording_id: Annotated[str, typer.Argument(help="Recording id")],
    tenant: TenantOption,
    reason: Annotated[str | None, typer.Option(help="Why it must be kept (to place)")] = None,
    release: Annotated[bool, typer.Option("--release", help="Lift the hold")] = False,
    config: ConfigOption = None,
) -> None:
    """Place (--reason) or release (--release) a legal hold; audited."""
    from voicegw.store import recordings as store

    if not release and not reason:
        raise fail("--reason is required to place a legal hold (or pass --release)")

    async def work(session: AsyncSession) -> None:
        await _recording_row(session, tenant, recording_id)
        try:
            await store.set_legal_hold(
                session,
                actor=cli_actor(),
                kind=store.ObjectKind.RECORDING,
                tenant_id=tenant,
                object_id=recording_id,
                hold=not release,
                reason=None if release else reason,
            )
        except store.StateError as exc:
            raise fail(str(exc)) from None

    with_session(config, work)
    typer.echo(f"legal hold {'released' if release else 'placed'} on recording {recording_id}")


def main() -> None:
    app(prog_name="voicegw")


if __name__ == "__main__":
    main()
