"""The profile-section registry: upper packages add sections to the customer profile without crm importing them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from kit.columnar import driver_rows, driver_time
from kit.context import Context


@dataclass(frozen=True)
class ProfileRequest:
    """What a section builder gets: the session, the context, the customer's row id and the viewer's role."""

    session: Session
    ctx: Context
    customer_id: int
    viewer_role: str
    reader_locale: str | None = None  # the reader's language, when known (else sections use the customer's)


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


FilterBuilder = Callable[[Session, str, Any], Any]  # (session, value, customer-id column) -> SQL condition


@dataclass(frozen=True)
class CustomerFilter:
    """A customer-list query parameter an upper package adds: builds a SQL condition on the customer-id column it is given."""

    name: str
    description: str
    build: FilterBuilder
    max_length: int = 64


class CustomerFilterRegistry:
    """Query parameters of GET /customers contributed by upper packages (crm never imports them)."""

    def __init__(self) -> None:
        self._filters: dict[str, CustomerFilter] = {}

    def register(self, customer_filter: CustomerFilter) -> None:
        """Add (or replace) a filter."""
        self._filters[customer_filter.name] = customer_filter

    def get(self, name: str) -> CustomerFilter | None:
        """The filter of that name, if any."""
        return self._filters.get(name)

    def all(self) -> list[CustomerFilter]:
        """Every registered filter."""
        return list(self._filters.values())


def orders_section(request: ProfileRequest) -> dict[str, Any]:
    """Core profile section: order count, spend and first/last order."""
    # Profiles are the hot read: a driver query, not a statement built and compiled through the ORM each time.
    count, spend, discount, first, last = driver_rows(
        request.session, "SELECT count(id), coalesce(sum(amount_paid - refunded_amount), 0), "
                         "coalesce(sum(discount), 0), min(ordered_at), max(ordered_at) FROM orders "
                         "WHERE customer_id = :customer_id AND status <> 'cancelled'",
        {"customer_id": request.customer_id})[0]
    return {"orders": count, "total_spend": float(spend), "total_discount": float(discount),
            "first_order_at": driver_time(first), "last_order_at": driver_time(last)}
