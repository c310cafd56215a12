"""The runtime context shared by the API, the CLI and jobs: settings, engine, cipher and clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine

from kit.clock import Clock, SystemClock
from kit.crypto import ContactCipher
from kit.db import make_engine
from kit.settings import Settings, load_secret_key


@dataclass
class Context:
    """Everything a service needs besides its session."""

    settings: Settings
    engine: Engine
    cipher: ContactCipher
    clock: Clock = field(default_factory=SystemClock)


def build_context(settings: Settings, *, engine: Engine | None = None, clock: Clock | None = None,
                  create_key: bool = False) -> Context:
    """Assemble a Context from settings (the engine and clock can be injected)."""
    secret, _ = load_secret_key(settings, create=create_key)
    return Context(
        settings=settings,
        # A connection for every request in progress and a few more, so that none is opened and closed per request
        # (SQLAlchemy's default pool of 5 did that under load: a new PostgreSQL backend each time).
        engine=engine or make_engine(settings.resolved_database_url(), pool_size=settings.api_concurrency + 2,
                                     max_overflow=4),
        cipher=ContactCipher(secret, settings.secret_key_previous),
        clock=clock or SystemClock(),
    )


async def get_context(request: Request) -> Context:  # async: no thread-pool hop for a lookup
    """FastAPI dependency returning the app's Context."""
    return request.app.state.ctx


ContextDep = Annotated[Context, Depends(get_context)]
