"""The profile-section registry: upper packages add sections to the customer profile without crm importing them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from crm.context import Context


@dataclass(frozen=True)
class ProfileRequest:
    """What a section builder gets: the session, the context, the customer's row id and the viewer's role."""

    session: Session
    ctx: Context
    customer_id: int
    viewer_role: str


SectionBuilder = Callable[[ProfileRequest], dict[str, Any] | None]


class ProfileRegistry:
    """Named section builders, asked in registration order."""

    def __init__(self) -> None:
        self._sections: dict[str, SectionBuilder] = {}

    def register(self, name: str, builder: SectionBuilder) -> None:
        """Add (or replace) a section."""
        self._sections[name] = builder

    def names(self) -> list[str]:
        """Registered section names."""
        return list(self._sections)

    def build(self, request: ProfileRequest) -> dict[str, Any]:
        """Ask every section; a section may return None to say it has nothing for this customer."""
        return {name: builder(request) for name, builder in self._sections.items()}
