"""Command-line plumbing every package's Typer sub-app shares: the console, the context, date options, and the
entry point that turns user errors into one line on stderr."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from enum import StrEnum

import typer
from rich.console import Console

from kit.clock import SystemClock
from kit.context import Context, build_context
from kit.errors import DomainError
from kit.settings import MissingSecretKey, get_settings, load_secret_key

console = Console(soft_wrap=True)  # result lines stay whole, so scripts can grep them


@contextmanager
def phases(label: str, total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar over a command's phases with elapsed time and ETA; yields the callback each finished phase
    calls (rich draws nothing when the output is not a terminal)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[phase]}"),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(label, total=total, phase="")
        yield lambda name: bar.update(task, advance=1, phase=name)


def human_number(value: object, column: str = "") -> str:
    """A cell for people: counts with thousands separators, money to the unit (two decimals when small),
    shares and rates as percentages, other fractions to four significant digits; none as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if column.endswith(("share", "rate")) or column.startswith(("share", "rate", "retention")):
        return f"{value:.1%}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1 or column.endswith(("total", "mean", "revenue", "cost", "clv", "spend")):
        return f"{value:,.2f}"
    return f"{value:.4g}"


def seconds_text(timings: dict[str, float]) -> str:
    """Phase timings for people: 'state 0.12 s, read 1.30 s'."""
    return ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:,.2f} s" for k, v in timings.items()) or "none"


def choice(name: str, values: Iterable[str]) -> type[StrEnum]:
    """An Enum of option values, so the help lists them and Click refuses others with its usage line."""
    return StrEnum(name, {value.replace("-", "_"): value for value in values})


Population = choice("Population", ("active", "all"))
GeneratorVariant = choice("GeneratorVariant", ("standard", "hard"))
DataFormat = choice("DataFormat", ("csv", "ndjson"))


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
