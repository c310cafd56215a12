"""Command-line plumbing every package's Typer sub-app shares: the console, the context, date options, and the
entry point that turns user errors into one line on stderr."""

from __future__ import annotations

import os
import sys
import threading
from datetime import UTC, date, datetime

import typer
from rich.console import Console

from kit.clock import SystemClock
from kit.context import Context, build_context
from kit.errors import DomainError
from kit.settings import MissingSecretKey, get_settings, load_secret_key

console = Console(soft_wrap=True)  # result lines stay whole, so scripts can grep them


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def cli_context(create_key: bool = False) -> Context:
    """The context a command runs in (settings, engine, cipher, clock); optionally creates the local secret key."""
    settings = get_settings()
    if create_key:
        _, created = load_secret_key(settings, create=True)
        if created:
            console.print(f"[yellow]created a local secret key in {settings.key_file()} (git-ignored); "
                          "set CRM_SECRET_KEY in production[/yellow]")
    return build_context(settings)


def parse_day(value: str | None, option: str = "--end") -> date:
    """A YYYY-MM-DD option (today, UTC, when absent), or a CliError naming the option."""
    if value is None:
        return SystemClock().now().date()
    try:
        return date.fromisoformat(value)
    except ValueError as bad:
        raise CliError(f"{option}: '{value}' is not a date (YYYY-MM-DD)") from bad


def optional_day(value: str | None, option: str = "--date") -> date | None:
    """A YYYY-MM-DD option that may be absent."""
    return parse_day(value, option) if value is not None else None


def day_start(value: str | None, option: str) -> datetime | None:
    """A YYYY-MM-DD option as the UTC midnight that starts it (None when absent)."""
    if value is None:
        return None
    day = parse_day(value, option)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def parse_instant(value: str, option: str = "--now") -> datetime:
    """An ISO 8601 instant option (UTC when it names no zone)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CliError(f"{option} must be an ISO date-time, got {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _fail(message: str, code: int = 1) -> None:
    """Print one plain line on stderr (no wrapping, no markup) and exit."""
    sys.stderr.write(" ".join(message.split()) + "\n")
    sys.exit(code)


def run_cli(app: typer.Typer) -> None:
    """Run a Typer app: user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        app(standalone_mode=False, prog_name="crm")
    except (CliError, MissingSecretKey) as failure:
        _fail(f"error: {failure}")
    except DomainError as failure:
        fields = ", ".join(e["field"] for e in failure.errors if e.get("field"))
        _fail(f"error: {failure.detail}" + (f" ({fields})" if fields and fields not in failure.detail else ""))
    except (typer.Abort, KeyboardInterrupt):
        _fail("error: aborted", 130)
    except Exception as failure:  # noqa: BLE001 - the CLI promises one line, never a traceback
        import click

        if isinstance(failure, click.exceptions.Exit):
            sys.exit(failure.exit_code)
        # A usage error (Click's, or the copy of Click Typer vendors): Click's own form, the usage line and exit 2.
        if getattr(failure, "exit_code", None) == 2 and callable(getattr(failure, "show", None)):
            failure.show()
            sys.exit(failure.exit_code)
        if os.environ.get("CRM_DEBUG") == "1":  # `crm --debug …`: the whole story for a bug report
            raise
        if isinstance(failure, click.exceptions.ClickException):
            _fail(f"error: {failure.format_message()}", failure.exit_code)
        first_line = str(failure).strip().splitlines()[0] if str(failure).strip() else ""
        _fail(f"error: {type(failure).__name__}: {first_line}")


def worker_context(now: str | None) -> tuple[Context, threading.Event]:
    """A long-running worker's context (its clock fixed when `--now` is given) and the event SIGTERM sets, so the
    worker finishes the work in hand and exits."""
    import signal

    from kit.clock import FixedClock

    ctx = cli_context()
    if now is not None:
        ctx.clock = FixedClock(parse_instant(now))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return ctx, stop
