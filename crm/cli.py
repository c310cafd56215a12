"""crm's commands: `crm import`, `crm keys …` and `crm state rebuild` (merged into the root CLI by wiring.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from crm import auth, ingest, state
from crm.models import Role
from kit.cli import CliError, DataFormat, choice, cli_context, console
from kit.context import Context
from kit.db import session_scope

app = typer.Typer(no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
KIND_ALIASES = {"customers": "customers", "orders": "orders", "order-items": "order_items",
                "order_items": "order_items", "items": "order_items", "events": "events"}
IMPORT_ORDER = ("customers", "orders", "order_items", "events")
ImportKind = choice("ImportKind", ("customers", "orders", "order-items", "events"))


def import_file(ctx: Context, kind: str, path: Path, fmt: str | None, quiet: bool = False):
    """Import one file with a progress bar (hidden when quiet); returns the import job."""
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    fmt = fmt or ("ndjson" if path.suffix.lower() in (".ndjson", ".jsonl") else "csv")
    total = path.stat().st_size
    with session_scope(ctx.engine) as session, Progress(
        TextColumn(f"[bold]{kind}[/bold]"), BarColumn(), TextColumn("{task.fields[rows]:>12,} rows"),
        TransferSpeedColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
        disable=quiet, transient=quiet,
    ) as progress:
        task = progress.add_task(kind, total=total, rows=0)
        job = ingest.run_import(
            session, ctx, kind=kind, chunks=ingest.file_chunks(path), fmt=fmt, source=str(path), actor="cli",
            progress=lambda rows, done: progress.update(task, completed=done, rows=rows))
        return job


def print_import_job(job) -> None:
    """An import's counts and its first reported errors."""
    console.print(f"import #{job.id} {job.kind}: {job.rows_total:,} rows, {job.rows_inserted:,} inserted, "
                  f"{job.rows_updated:,} updated, {job.rows_unchanged:,} unchanged, {job.rows_failed:,} failed")
    for error in job.errors[:5]:
        console.print(f"  row {error['row']}: {error['field'] or 'record'}: {error['reason']}")
    if job.rows_failed > 5:
        console.print(f"  … see GET /v1/imports/{job.id} for up to {len(job.errors)} reported errors")


@app.command("import")
def import_(
    kind: Annotated[ImportKind, typer.Argument(help="what the file holds")],
    file: Annotated[Path, typer.Argument(help="CSV or NDJSON file")],
    format: Annotated[DataFormat | None, typer.Option("--format", help="default: by the file's extension")] = None,
) -> None:
    """Import a file idempotently: good rows are kept, bad rows reported by number."""
    print_import_job(import_file(cli_context(), KIND_ALIASES[kind.value], file, format.value if format else None))


@keys_app.command("create")
def keys_create(role: Annotated[Role, typer.Option(help="what the key may do", case_sensitive=False)],
                name: Annotated[str, typer.Option(help="who or what uses it, e.g. shop-sync")]) -> None:
    """Create an API key; the key is printed once, as the last line."""
    parsed = role
    ctx = cli_context()
    with session_scope(ctx.engine) as session:
        issued = auth.create_key(session, ctx, name=name, role=parsed, actor="cli")
        console.print(f"created key #{issued.record.id} '{name}' ({parsed.value}); store it now, it is not shown again:")
    print(issued.secret)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    ctx = cli_context()
    table = Table("id", "name", "role", "prefix", "created", "revoked")
    with session_scope(ctx.engine) as session:
        for key in auth.list_keys(session):
            table.add_row(str(key.id), key.name, key.role, key.key_prefix, f"{key.created_at:%Y-%m-%d %H:%M}",
                          f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="the key's id (crm keys list)")]) -> None:
    """Revoke a key."""
    ctx = cli_context()
    with session_scope(ctx.engine) as session:
        auth.revoke_key(session, ctx, key_id=key_id, actor="cli")
    console.print(f"revoked key #{key_id}")


secrets_app = typer.Typer(help="The secret key that encrypts contact data: status, rotation.", no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")


@secrets_app.command("status")
def secrets_status() -> None:
    """The current key's id, the previous ones still configured, and how many customers still use an older key."""
    from crm import key_rotation

    ctx = cli_context()
    with session_scope(ctx.engine) as session:
        found = key_rotation.status(session, ctx)
    table = Table("current key id", "previous key ids", "customers still on an older key")
    table.add_row(found["current_key_id"], ", ".join(found["previous_key_ids"]) or "none",
                  f"{found['customers_pending']:,}")
    console.print(table)


@secrets_app.command("new-key")
def secrets_new_key() -> None:
    """Print a fresh random key for CRM_SECRET_KEY (the old one goes to CRM_SECRET_KEY_PREVIOUS until rotated)."""
    import secrets

    print(secrets.token_urlsafe(32))


@secrets_app.command("rotate")
def secrets_rotate(batch: Annotated[int, typer.Option(min=10, max=50_000, help="customers per transaction")] = 1000
                   ) -> None:
    """Re-encrypt every customer's contact data under CRM_SECRET_KEY, in batches, while the service runs (set the
    old key in CRM_SECRET_KEY_PREVIOUS first; drop it when this reports nothing pending)."""
    from rich.progress import MofNCompleteColumn

    from crm import key_rotation

    ctx = cli_context()
    with Progress(TextColumn("rotating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("rotate", total=None)
        found = key_rotation.rotate(ctx, batch=batch, progress=lambda done, total: bar.update(
            task, completed=done, total=total))
    console.print(f"key {found['key_id']}: {found['rotated']:,} customers re-encrypted, "
                  f"{found['changed_meanwhile']:,} changed meanwhile (already current), "
                  f"{found['customers_pending']:,} still pending")


state_app = typer.Typer(help="The customer state (derived from orders and events).", no_args_is_help=True)
app.add_typer(state_app, name="state")


@state_app.command("rebuild")
def state_rebuild() -> None:
    """Recompute the whole customer state from the raw orders and events (its clock keeps its day)."""
    import time

    ctx = cli_context()
    started = time.perf_counter()
    with session_scope(ctx.engine) as session:
        done = state.rebuild(session, ctx, uncommitted=False)
    console.print(f"rebuilt {done['customers']} customers' state from {done['days']} customer-days "
                  f"in {time.perf_counter() - started:.1f}s")
