"""Queries of the core that other packages and the API use: customers, consent and columnar frames."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import phonenumbers
import polars as pl
from sqlalchemy import bindparam, text
from sqlmodel import Session, select

from crm import audit
from crm.models import Channel, Consent, ConsentChange, ConsentStatus, Customer, CustomerActivity, Order
from crm.state import MONEY_DAYS, needs_rebuild, shop_cost_totals
from crm.state import clock as state_clock
from crm.state import money_frame as state_money_frame
from crm.validation import normalise_email, normalise_phone
from kit.channels import CHANNELS
from kit.clock import ensure_utc
from kit.columnar import (
    ColumnarReader,
    as_float,
    customer_clause,
    driver_rows,
    driver_time,
    read_columns,
    read_for_keys,
    read_frame,
)
from kit.context import Context
from kit.db import is_postgres
from kit.errors import InvalidInput, NotFound
from kit.timezones import utc_midnight

ORDER_SCHEMA = {"order_id": pl.Int64, "customer_id": pl.Int64, "ordered_at": pl.Datetime("us", "UTC"),
                "amount_paid": pl.Float64, "discount": pl.Float64, "cost_of_goods": pl.Float64,
                "has_coupon": pl.Boolean}
EVENT_SCHEMA = {"customer_id": pl.Int64, "occurred_at": pl.Datetime("us", "UTC"), "type": pl.String}


def orders_frame(session: Session, start: datetime | None, end: datetime, *, customer_id: int | None = None,
                 reader: ColumnarReader | None = None, costs: bool = True) -> pl.DataFrame:
    """Orders with start <= ordered_at < end as a polars frame (one row per order), optionally of one customer.

    costs=False leaves out cost_of_goods (a column fewer to read for callers that never look at margins).
    """
    lower = "AND o.ordered_at >= :start" if start is not None else ""
    one = "AND o.customer_id = :customer_id" if customer_id is not None else ""
    cost = as_float(session, "o.cost_of_goods") if costs else "NULL"
    # Spend is net: cancelled orders are left out, refunds taken off (every reader of orders sees the same).
    query = (f"SELECT o.id, o.customer_id, o.ordered_at, {as_float(session, 'o.amount_paid - o.refunded_amount')}, "
             f"{as_float(session, 'o.discount')}, {cost}, "
             f"o.coupon_code IS NOT NULL FROM orders o WHERE o.ordered_at < :end AND o.status <> 'cancelled' "
             f"{lower} {one}")
    params = {"end": end} | ({"start": start} if start is not None else {}) | (
        {"customer_id": customer_id} if customer_id is not None else {})
    return read_columns(session, reader, query, params, ORDER_SCHEMA, one_customer=customer_id is not None)


def events_frame(session: Session, start: datetime | None, end: datetime, *, customer_id: int | None = None,
                 reader: ColumnarReader | None = None) -> pl.DataFrame:
    """Events with start <= occurred_at < end as a polars frame, optionally of one customer."""
    lower = "AND e.occurred_at >= :start" if start is not None else ""
    one = "AND e.customer_id = :customer_id" if customer_id is not None else ""
    query = f"SELECT e.customer_id, e.occurred_at, e.type FROM event e WHERE e.occurred_at < :end {lower} {one}"
    params = {"end": end} | ({"start": start} if start is not None else {}) | (
        {"customer_id": customer_id} if customer_id is not None else {})
    return read_columns(session, reader, query, params, EVENT_SCHEMA, one_customer=customer_id is not None)


CUSTOMER_SCHEMA = {"customer_id": pl.Int64, "signed_up_at": pl.Datetime("us", "UTC"), "birthday": pl.Date,
                   "time_zone": pl.String}
ORDER_FLAG_SCHEMA = {"order_id": pl.Int64, "marked_down": pl.Boolean, "new_product_lines": pl.Int64}


def customers_frame(session: Session, *, customer_id: int | None = None,
                    reader: ColumnarReader | None = None) -> pl.DataFrame:
    """Every customer's (or one customer's) row id, sign-up time, birthday and time zone (no contact data)."""
    one = "WHERE c.id = :customer_id" if customer_id is not None else ""
    params = {"customer_id": customer_id} if customer_id is not None else {}
    return read_columns(session, reader, f"SELECT c.id, c.signed_up_at, c.birthday, c.time_zone FROM customer c {one}",
                        params, CUSTOMER_SCHEMA, one_customer=customer_id is not None)


def order_flags_frame(session: Session, *, customer_id: int | None = None,
                      reader: ColumnarReader | None = None) -> pl.DataFrame:
    """Orders with a line sold below list price or a new product: whether marked down, how many new-product lines.

    Orders without such lines are absent (callers left-join and read them as plain). Only the flagged item
    rows leave the database, which on 16M items reads in half the time of a join with the orders.
    """
    one = ("AND i.order_id IN (SELECT o.id FROM orders o WHERE o.customer_id = :customer_id)"
           if customer_id is not None else "")
    query = ("SELECT i.order_id, max(CASE WHEN i.unit_price < i.list_price THEN 1 ELSE 0 END) = 1, "
             "sum(CASE WHEN i.is_new_product THEN 1 ELSE 0 END) FROM order_item i "
             f"WHERE (i.unit_price < i.list_price OR i.is_new_product) {one} GROUP BY i.order_id")
    params = {"customer_id": customer_id} if customer_id is not None else {}
    return read_columns(session, reader, query, params, ORDER_FLAG_SCHEMA, one_customer=customer_id is not None)


CATEGORY_SCHEMA = {"customer_id": pl.Int64, "category": pl.String, "first_bought_at": pl.Datetime("us", "UTC")}


def customer_categories_frame(session: Session, *, reader: ColumnarReader | None = None) -> pl.DataFrame:
    """When each customer first bought from each product category (one row per customer and category)."""
    query = ("SELECT o.customer_id, i.category, min(o.ordered_at) FROM order_item i JOIN orders o ON o.id = i.order_id "
             "WHERE i.category IS NOT NULL GROUP BY o.customer_id, i.category")
    return read_columns(session, reader, query, {}, CATEGORY_SCHEMA, one_customer=False)


def customer_by_external_id(session: Session, external_id: str) -> Customer:
    """One customer by the shop's id, or NotFound."""
    customer = session.exec(select(Customer).where(Customer.external_id == external_id)).first()
    if customer is None:
        raise NotFound(f"customer '{external_id}' does not exist")
    return customer


def find_customers(session: Session, ctx: Context, *, after_id: int | None = None, limit: int = 100,
                   email: str | None = None, phone: str | None = None, locale: str | None = None,
                   time_zone: str | None = None, membership_level: str | None = None,
                   ids: list[int] | None = None, conditions: list[Any] | None = None) -> list[Customer]:
    """A page of customers ordered by id (cursor = last id seen), filtered; email/phone match exactly."""
    query = select(Customer).order_by(Customer.id).limit(limit)
    if after_id is not None:
        query = query.where(Customer.id > after_id)
    if email is not None:
        normalised = normalise_email(email)
        if normalised is None:
            raise InvalidInput("not a valid email address", errors=[{"field": "email", "reason": "invalid"}])
        query = query.where(Customer.email_hash.in_(ctx.cipher.blind_indexes(normalised)))
    if phone is not None:
        normalised = normalise_phone(phone, ctx.settings.default_phone_region)
        if normalised is None:
            raise InvalidInput("not a valid phone number", errors=[{"field": "phone", "reason": "invalid"}])
        query = query.where(Customer.phone_hash.in_(ctx.cipher.blind_indexes(normalised)))
    for column, value in ((Customer.locale, locale), (Customer.time_zone, time_zone),
                          (Customer.membership_level, membership_level)):
        if value is not None:
            query = query.where(column == value)
    if ids is not None:
        query = query.where(Customer.id.in_(ids))
    for condition in conditions or []:  # from filters upper packages registered (tier, tag, …)
        query = query.where(condition)
    return list(session.exec(query))


def mask_email(email: str | None) -> str | None:
    """j***@example.com: the first character of the local part and the domain."""
    if not email:
        return email
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def mask_phone(e164: str | None) -> str | None:
    """+86 1*******001: the country code and at most four national digits (the first and the last three of a long
    number, fewer of a short one), so no search by number can rebuild it from a few masked views."""
    if not e164:
        return e164
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return "***"
    national = str(number.national_number)
    head = 1 if len(national) >= 9 else 0
    tail = 3 if len(national) >= 9 else 2 if len(national) >= 6 else 1
    tail = min(tail, max(len(national) - 4, 0))  # short numbers: at least four digits stay hidden
    hidden = len(national) - head - tail
    return f"+{number.country_code} {national[:head]}{'*' * hidden}{national[len(national) - tail:] if tail else ''}"


def contact_of(ctx: Context, customer: Customer, *, masked: bool) -> dict[str, Any]:
    """Decrypted (or masked) contact data of one customer."""
    email = ctx.cipher.decrypt(customer.email_ciphertext)
    phone = ctx.cipher.decrypt(customer.phone_ciphertext)
    tokens = ctx.cipher.decrypt(customer.push_tokens_ciphertext)
    name = ctx.cipher.decrypt(customer.name_ciphertext)
    token_list = json.loads(tokens) if tokens else []
    if masked:
        return {"email": mask_email(email), "phone": mask_phone(phone), "push_tokens": len(token_list),
                "name": mask_name(name)}
    return {"email": email, "phone": phone, "push_tokens": token_list, "name": name}


def mask_name(name: str | None) -> str | None:
    """'Ana Li' -> 'A** L*': the initials only."""
    if not name:
        return name
    return " ".join(part[0] + "*" * (len(part) - 1) for part in name.split())


def consent_of(session: Session, customer_id: int) -> dict[str, dict[str, Any]]:
    """Current consent per channel (channels never stated are absent)."""
    rows = driver_rows(session, "SELECT channel, status, source, changed_at FROM consent "
                                "WHERE customer_id = :customer_id", {"customer_id": customer_id})
    return {channel: {"status": status, "source": source, "changed_at": driver_time(changed_at)}
            for channel, status, source, changed_at in rows}


def consent_history(session: Session, customer_id: int) -> list[ConsentChange]:
    """Every consent change of a customer, oldest first."""
    return list(session.exec(select(ConsentChange).where(ConsentChange.customer_id == customer_id)
                             .order_by(ConsentChange.changed_at, ConsentChange.id)))


def _consent_channel(name: str) -> str:
    """The name of a consent channel the registry knows, or InvalidInput."""
    if name not in CHANNELS.consent_channels():
        raise InvalidInput.field("channel", f"unknown channel '{name}'")
    return name


def record_consent(session: Session, ctx: Context, *, customer_id: int, channel: Channel | str,
                   status: ConsentStatus,
                   source: str, actor: str, at: datetime | None = None) -> bool:
    """Append a consent change and update the current state; returns False when nothing changed. A statement dated
    later than now is refused (422): it would outrank every later opt-out."""
    now = ctx.clock.now()
    changed_at = ensure_utc(at) if at is not None else now
    if changed_at > now:
        raise InvalidInput("at: later than now: a consent statement cannot come from the future",
                           errors=[{"field": "at", "reason": "later than now"}])
    channel = _consent_channel(str(channel))  # a Channel member, or a channel registered since
    current = session.get(Consent, (customer_id, channel))
    if current is not None and current.status == status.value:
        return False
    before = {"status": current.status} if current else None
    session.add(ConsentChange(customer_id=customer_id, channel=channel, status=status.value, source=source,
                              changed_at=changed_at, recorded_at=now))
    if current is None:
        current = Consent(customer_id=customer_id, channel=channel, status=status.value, source=source,
                          changed_at=changed_at)
    else:
        current.status, current.source, current.changed_at = status.value, source, changed_at
    session.add(current)
    audit.record(session, actor=actor, action="consent.change", entity="customer", entity_id=customer_id, at=now,
                 before=before, after={"channel": channel, "status": status.value, "source": source})
    return True


CONTACT_SCHEMA = {"customer_id": pl.Int64, "external_id": pl.String, "time_zone": pl.String, "locale": pl.String,
                  "birthday": pl.Date, "has_email": pl.Boolean, "has_phone": pl.Boolean, "has_push": pl.Boolean}
CONSENT_SCHEMA = {"customer_id": pl.Int64, "channel": pl.String, "status": pl.String}
MONEY_SCHEMA = {"customer_id": pl.Int64, "spend": pl.Float64, "discount": pl.Float64, "orders": pl.Int64,
                "cost_known_value": pl.Float64, "cost": pl.Float64}


def contactability_frame(session: Session, *, customer_id: int | None = None, customer_ids: list[int] | None = None,
                         reader: ColumnarReader | None = None) -> pl.DataFrame:
    """Per customer (all, one, or a few named by id): ids, zone, locale, birthday and which contact data exist
    (never the data itself)."""
    one, params, small = customer_clause("c.id", customer_id, customer_ids)
    query = ("SELECT c.id, c.external_id, c.time_zone, c.locale, c.birthday, c.email_hash IS NOT NULL, "
             f"c.phone_hash IS NOT NULL, c.push_tokens_hash IS NOT NULL FROM customer c {one}")
    return read_columns(session, reader, query, params, CONTACT_SCHEMA, one_customer=small)


def customer_time_zones(session: Session) -> list[str]:
    """The distinct time zones customers live in."""
    return sorted(z for z in session.exec(select(Customer.time_zone).distinct()).all() if z)


def consent_frame(session: Session, *, customer_id: int | None = None, customer_ids: list[int] | None = None,
                  channels: list[str] | None = None, reader: ColumnarReader | None = None) -> pl.DataFrame:
    """Current consent rows (customer, channel, status) of all customers, one, or a few named by id (of the given
    consent channels only, when named)."""
    one, params, small = customer_clause("c.customer_id", customer_id, customer_ids)
    if channels is not None:
        binds = {f"channel_{i}": name for i, name in enumerate(channels)}
        one += (" AND " if one else "WHERE ") + f"c.channel IN ({', '.join(':' + k for k in binds) or 'NULL'})"
        params = params | binds
    return read_columns(session, reader, f"SELECT c.customer_id, c.channel, c.status FROM consent c {one}", params,
                        CONSENT_SCHEMA, one_customer=small)


def money_window(now: datetime) -> tuple[datetime, datetime]:
    """Planning's money window: the 365 UTC days before now's day, and that day itself (what the state holds)."""
    today = utc_midnight(now.date())
    return today - timedelta(days=MONEY_DAYS), today + timedelta(days=1)


def order_money_frame(session: Session, start: datetime, end: datetime, *, customer_id: int | None = None,
                      customer_ids: list[int] | None = None, reader: ColumnarReader | None = None) -> pl.DataFrame:
    """Per customer over [start, end) from the raw orders: spend, discount, order count, and list value and cost
    where cost is known (cancelled orders left out, refunds taken off)."""
    one, keyed, small = customer_clause("o.customer_id", customer_id, customer_ids, keyword="AND")
    paid, discount, cost = (as_float(session, f"o.{c}") for c in ("amount_paid - o.refunded_amount", "discount",
                                                                   "cost_of_goods"))
    query = (f"SELECT o.customer_id, SUM({paid}), SUM({discount}), COUNT(*), "
             f"SUM(CASE WHEN o.cost_of_goods IS NOT NULL THEN {paid} + {discount} END), SUM({cost}) "
             f"FROM orders o WHERE o.ordered_at >= :start AND o.ordered_at < :end AND o.status <> 'cancelled' {one} "
             "GROUP BY o.customer_id")
    return read_columns(session, reader, query, {"start": start, "end": end} | keyed, MONEY_SCHEMA, one_customer=small)


def money_frame(session: Session, now: datetime, *, customer_id: int | None = None,
                customer_ids: list[int] | None = None, reader: ColumnarReader | None = None) -> tuple[pl.DataFrame, str]:
    """Planning's money per customer over `money_window(now)`, and where it came from.

    From the customer state (its trailing-year columns plus today's buckets) when its clock stands at now's UTC
    midnight, as after the night's segmentation; otherwise from the raw orders (the same numbers, read slower).
    """
    frame = state_money_frame(session, now, customer_id=customer_id, customer_ids=customer_ids, reader=reader)
    if frame is not None:
        return frame, "state"
    start, end = money_window(now)
    return order_money_frame(session, start, end, customer_id=customer_id, customer_ids=customer_ids,
                             reader=reader), "history"


FIRST_ORDER_SCHEMA = {"customer_id": pl.Int64, "first_order_at": pl.Datetime("us", "UTC")}


def first_orders_frame(session: Session, end: datetime, *, customer_id: int | None = None,
                       reader: ColumnarReader | None = None) -> pl.DataFrame:
    """Each customer's first order time before `end` (cancelled orders do not count): from the customer state's
    lifetime columns, which every write keeps current, or from the raw orders before the state's first build."""
    one_state = "AND s.customer_id = :customer_id" if customer_id is not None else ""
    one = "AND o.customer_id = :customer_id" if customer_id is not None else ""
    params = {"end": end} | ({"customer_id": customer_id} if customer_id is not None else {})
    if not needs_rebuild(state_clock(session)):
        query = ("SELECT s.customer_id, s.lifetime_first_order_at FROM customer_state s "
                 f"WHERE s.lifetime_first_order_at < :end {one_state}")
    else:
        query = (f"SELECT o.customer_id, MIN(o.ordered_at) FROM orders o WHERE o.ordered_at < :end "
                 f"AND o.status <> 'cancelled' {one} GROUP BY o.customer_id")
    return read_columns(session, reader, query, params, FIRST_ORDER_SCHEMA, one_customer=customer_id is not None)


def shop_cost_ratio(session: Session, now: datetime) -> float | None:
    """Cost of goods over list value (paid + discount) of the money window's orders with a known cost, or None."""
    totals = shop_cost_totals(session, now)
    if totals is None:
        start, end = money_window(now)
        paid, discount, cost = (as_float(session, f"o.{c}") for c in ("amount_paid - o.refunded_amount",
                                                                       "discount", "cost_of_goods"))
        totals = driver_rows(session, f"SELECT SUM({cost}), SUM({paid} + {discount}) FROM orders o "
                             "WHERE o.cost_of_goods IS NOT NULL AND o.status <> 'cancelled' "
                             "AND o.ordered_at >= :start AND o.ordered_at < :end", {"start": start, "end": end})[0]
    cost, value = totals
    return float(cost) / float(value) if cost is not None and value else None


CORE_TABLES = ("customer", "consent", "consent_change", "orders", "order_item", "event", "audit_log")


def core_row_counts(session: Session) -> dict[str, int]:
    """How many rows each of crm's tables holds (the demo's summary)."""
    return {name: int(driver_rows(session, f"SELECT count(*) FROM {name}", {})[0][0]) for name in CORE_TABLES}


def external_ids_frame(session: Session) -> pl.DataFrame:
    """Every customer's row id and the shop's id for them."""
    return read_frame(session, "SELECT id, external_id FROM customer", {},
                      {"customer_id": pl.Int64, "external_id": pl.String})


def recent_orders(session: Session, customer_id: int, limit: int = 50) -> list[Order]:
    """A customer's most recent orders, newest first."""
    return list(session.exec(select(Order).where(Order.customer_id == customer_id)
                             .order_by(Order.ordered_at.desc()).limit(limit)))


def get_customer(session: Session, customer_id: int) -> Customer | None:
    """One customer by row id (None when there is none)."""
    return session.get(Customer, customer_id)


def customers_by_phone(session: Session, ctx: Context, e164: str) -> list[Customer]:
    """Every customer holding this (normalised) phone number, in id order: a household may share one."""
    return list(session.exec(select(Customer).where(Customer.phone_hash.in_(ctx.cipher.blind_indexes(e164)))
                             .order_by(Customer.id)))


def customer_ids_by_email(session: Session, ctx: Context, email: str) -> list[int]:
    """The ids of every customer holding this (normalised) email address."""
    return list(session.exec(select(Customer.id).where(Customer.email_hash.in_(ctx.cipher.blind_indexes(email)))))


def _in_ids(query: str):
    return text(query).bindparams(bindparam("ids", expanding=True))


def time_zones_of(session: Session, customer_ids: list[int]) -> dict[int, str]:
    """Each customer's time zone."""
    query = _in_ids("SELECT id, time_zone FROM customer WHERE id IN :ids")
    return dict(session.connection().execute(query, {"ids": customer_ids}).all())


def consents_of(session: Session, customer_ids: list[int]) -> dict[tuple[int, str], str]:
    """The current consent status per (customer, channel) of a few customers."""
    query = _in_ids("SELECT customer_id, channel, status FROM consent WHERE customer_id IN :ids")
    return {(r[0], r[1]): r[2] for r in session.connection().execute(query, {"ids": customer_ids})}


def phone_sharers(session: Session, customer_ids: list[int]) -> dict[int, set[int]]:
    """Per customer: themselves and every customer sharing their phone number."""
    query = _in_ids("SELECT c.id, other.id FROM customer c JOIN customer other ON other.id = c.id "
                    "OR (other.phone_hash = c.phone_hash AND c.phone_hash IS NOT NULL) WHERE c.id IN :ids")
    out: dict[int, set[int]] = {}
    for customer_id, other in session.connection().execute(query, {"ids": customer_ids}):
        out.setdefault(customer_id, set()).add(other)
    return out


def contacts_of(session: Session, ctx: Context, customer_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Decrypted contact data and facts of a few customers, for a send (never for logs)."""
    query = _in_ids("SELECT id, external_id, time_zone, email_ciphertext, phone_ciphertext, push_tokens_ciphertext "
                    "FROM customer WHERE id IN :ids")
    cipher, out = ctx.cipher, {}
    for row in session.connection().execute(query, {"ids": customer_ids}):
        tokens = cipher.decrypt(row.push_tokens_ciphertext)
        out[row.id] = {"external_id": row.external_id, "time_zone": row.time_zone,
                       "email": cipher.decrypt(row.email_ciphertext), "phone": cipher.decrypt(row.phone_ciphertext),
                       "push": tuple(json.loads(tokens)) if tokens else ()}
    return out


def locales_of(session: Session, customer_ids: list[int]) -> dict[int, str | None]:
    """Each of a few customers' locale."""
    if not customer_ids:
        return {}
    query = _in_ids("SELECT id, locale FROM customer WHERE id IN :ids")
    return dict(session.connection().execute(query, {"ids": customer_ids}).all())


def external_ids_of(session: Session, customer_ids: list[int]) -> dict[int, str]:
    """The shop's id of each of a few customers."""
    if not customer_ids:
        return {}
    query = _in_ids("SELECT id, external_id FROM customer WHERE id IN :ids")
    return dict(session.connection().execute(query, {"ids": customer_ids}).all())


def _in_batches(values: list[str], size: int = 5000):
    # SQLite binds at most 32,766 values per statement; PostgreSQL's index scan serves each batch.
    for start in range(0, len(values), size):
        yield values[start:start + size]


def used_coupon_codes(session: Session, codes: list[str]) -> set[str]:
    """The coupon codes among `codes` that some order carries."""
    if is_postgres(session):
        # One index probe per code (a shop's few common codes make PostgreSQL expect ~1 in 40 orders per code, so
        # any IN list is planned as a scan of every order).
        query = text("SELECT c.code FROM unnest(CAST(:codes AS text[])) AS c(code) "
                     "WHERE EXISTS (SELECT 1 FROM orders o WHERE o.coupon_code = c.code)")
        return {row[0] for row in session.connection().execute(query, {"codes": codes})}
    query = text("SELECT DISTINCT coupon_code FROM orders WHERE coupon_code IN :codes").bindparams(
        bindparam("codes", expanding=True))
    return {row[0] for batch in _in_batches(codes) for row in session.connection().execute(query, {"codes": batch})}


def first_orders_by_coupon(session: Session, codes: list[str]) -> dict[str, dict[str, Any]]:
    """Per coupon code among `codes`: the first order (by time, then id) carrying it — its id, discount and basket
    value (paid plus discount)."""
    if is_postgres(session):
        rows = session.connection().execute(text(
            "SELECT c.code, f.id, f.discount, f.basket FROM unnest(CAST(:codes AS text[])) AS c(code) "
            "CROSS JOIN LATERAL (SELECT o.id, o.discount, o.amount_paid + o.discount AS basket FROM orders o "
            "WHERE o.coupon_code = c.code ORDER BY o.ordered_at, o.id LIMIT 1) f"), {"codes": codes}).all()
    else:
        query = text(
            "SELECT coupon_code, id, discount, basket FROM (SELECT o.coupon_code, o.id, o.discount, "
            "o.amount_paid + o.discount AS basket, ROW_NUMBER() OVER (PARTITION BY o.coupon_code "
            "ORDER BY o.ordered_at, o.id) AS n FROM orders o WHERE o.coupon_code IN :codes) firsts WHERE n = 1"
        ).bindparams(bindparam("codes", expanding=True))
        rows = [row for batch in _in_batches(codes) for row in session.connection().execute(query, {"codes": batch})]
    return {code: {"order_id": order_id, "discount": float(discount or 0), "basket": float(basket or 0)}
            for code, order_id, discount, basket in rows}


def order_lines_frame(session: Session, since: datetime, until: datetime) -> pl.DataFrame:
    """Order lines of orders placed in [since, until): order, customer, time, sku, quantity, unit price, paid."""
    return read_frame(session, (
        f"SELECT o.id, o.customer_id, o.ordered_at, i.sku, i.qty, {as_float(session, 'i.unit_price')}, "
        f"{as_float(session, 'o.amount_paid')} FROM order_item i JOIN orders o ON o.id = i.order_id "
        f"WHERE o.ordered_at >= :since AND o.ordered_at < :until"), {"since": since, "until": until},
        {"order_id": pl.Int64, "customer_id": pl.Int64, "ordered_at": pl.Datetime("us", "UTC"), "sku": pl.String,
         "qty": pl.Int64, "unit_price": pl.Float64, "amount_paid": pl.Float64})


def first_order_times_frame(session: Session) -> pl.DataFrame:
    """Each buyer's first order time, over all history."""
    return read_frame(session, "SELECT o.customer_id, MIN(o.ordered_at) FROM orders o GROUP BY o.customer_id", {},
                      {"customer_id": pl.Int64, "first_at": pl.Datetime("us", "UTC")})


# ---------------------------------------------------------------- what journeys ask about a few customers


_AT = pl.Datetime("us", "UTC")


def first_order_ids(session: Session, order_ids: list[int]) -> set[int]:
    """Which of these orders are their customer's first (cancelled orders do not count)."""
    if not order_ids:
        return set()
    rows = session.connection().execute(_in_ids(
        "SELECT o.id FROM orders o WHERE o.id IN :ids AND o.status <> 'cancelled' AND NOT EXISTS ("
        "SELECT 1 FROM orders p WHERE p.customer_id = o.customer_id AND p.status <> 'cancelled' "
        "AND (p.ordered_at < o.ordered_at OR (p.ordered_at = o.ordered_at AND p.id < o.id)))"),
        {"ids": order_ids}).all()
    return {r[0] for r in rows}


def latest_orders_since(session: Session, customer_ids: list[int], since: datetime) -> pl.DataFrame:
    """Per customer: the latest order (not cancelled) at or after `since` (customer_id, at)."""
    clause, params, _ = customer_clause("o.customer_id", customer_ids=customer_ids, keyword="AND")
    return read_frame(session, "SELECT o.customer_id, MAX(o.ordered_at) FROM orders o WHERE o.ordered_at >= :since "
                      f"AND o.status <> 'cancelled' {clause} GROUP BY o.customer_id", params | {"since": since},
                      {"customer_id": pl.Int64, "at": _AT}, same_connection=True, small=True)


def latest_events_since(session: Session, customer_ids: list[int], types: list[str],
                        since: datetime) -> pl.DataFrame:
    """Per customer and event type (of `types`): the latest event at or after `since` (customer_id, type, at)."""
    clause, params, _ = customer_clause("e.customer_id", customer_ids=customer_ids, keyword="AND")
    binds = {f"type_{i}": name for i, name in enumerate(types)}
    return read_frame(session, "SELECT e.customer_id, e.type, MAX(e.occurred_at) FROM event e WHERE "
                      f"e.occurred_at >= :since AND e.type IN ({', '.join(':' + k for k in binds) or 'NULL'}) "
                      f"{clause} GROUP BY e.customer_id, e.type", params | binds | {"since": since},
                      {"customer_id": pl.Int64, "type": pl.String, "at": _AT}, same_connection=True, small=True)


def attributes_of(session: Session, customer_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Each customer's free-form attributes."""
    rows = session.connection().execute(_in_ids("SELECT id, attributes FROM customer WHERE id IN :ids"),
                                        {"ids": customer_ids}).all() if customer_ids else []
    return {r[0]: r[1] if isinstance(r[1], dict) else json.loads(r[1] or "{}") for r in rows}


def set_attributes(session: Session, customer_id: int, values: dict[str, Any], now: datetime) -> None:
    """Merge values into a customer's attributes (a journey's update step)."""
    customer = session.get(Customer, customer_id)
    if customer is not None:
        customer.attributes = {**(customer.attributes or {}), **values}
        customer.updated_at = now
        session.add(customer)


def birthdays_on(session: Session, day) -> pl.DataFrame:
    """Customers whose birthday falls on the day (29 February birthdays on the 28th in common years)."""
    people = read_frame(session, "SELECT c.id, c.birthday FROM customer c WHERE c.birthday IS NOT NULL", {},
                        {"customer_id": pl.Int64, "birthday": pl.Date}, same_connection=True)
    month, dom = pl.col("birthday").dt.month(), pl.col("birthday").dt.day()
    leap = day.year % 4 == 0 and (day.year % 100 != 0 or day.year % 400 == 0)
    on_day = (month == day.month) & (dom == day.day)
    if not leap and (day.month, day.day) == (2, 28):
        on_day = on_day | ((month == 2) & (dom == 29))
    return people.filter(on_day).select("customer_id")


def signed_up_on(session: Session, day) -> pl.DataFrame:
    """Customers who signed up on the UTC day."""
    start = utc_midnight(day)
    return read_frame(session, "SELECT c.id FROM customer c WHERE c.signed_up_at >= :start AND c.signed_up_at < :end",
                      {"start": start, "end": start + timedelta(days=1)}, {"customer_id": pl.Int64},
                      same_connection=True)


def order_times_frame(session: Session, customer_ids: pl.Series, since: datetime) -> pl.DataFrame:
    """Every order (not cancelled) of these customers at or after `since` (customer_id, ordered_at)."""
    return read_for_keys(session, "SELECT o.customer_id, o.ordered_at FROM orders o JOIN {keys} k ON "
                         "k.key = o.customer_id WHERE o.ordered_at >= :since AND o.status <> 'cancelled'",
                         customer_ids, {"since": since}, {"customer_id": pl.Int64, "ordered_at": _AT})


def reachable_customers(session: Session, channel: str, *, zone: str | None = None, limit: int = 20) -> list[int]:
    """Customers with contact data and an opt-in for the channel (optionally in one zone), lowest ids first."""
    spec = CHANNELS.get(channel)
    column = "push_tokens_hash" if spec.contact_field == "push" else f"{spec.contact_field}_hash"
    zone_clause = "AND c.time_zone = :zone" if zone else ""
    rows = session.connection().execute(text(
        f"SELECT c.id FROM customer c JOIN consent k ON k.customer_id = c.id AND k.channel = :consent "
        f"AND k.status = 'opted_in' WHERE c.{column} IS NOT NULL {zone_clause} ORDER BY c.id "
        "LIMIT :limit"), {"consent": spec.consent, "zone": zone, "limit": limit}).all()
    return [r[0] for r in rows]


def purchase_gaps(session: Session, customer_ids: list[int]) -> dict[int, float]:
    """Each repeat buyer's mean days between orders, from the state's lifetime columns (first to last order over
    the orders between); customers with fewer than two orders are absent."""
    clause, params, _ = customer_clause("s.customer_id", customer_ids=customer_ids, keyword="AND")
    frame = read_frame(session, "SELECT s.customer_id, s.lifetime_orders, s.lifetime_first_order_at, "
                       f"s.lifetime_last_order_at FROM customer_state s WHERE s.lifetime_orders >= 2 {clause}", params,
                       {"customer_id": pl.Int64, "orders": pl.Int64, "first": _AT, "last": _AT},
                       same_connection=True, small=True)
    gaps = frame.select("customer_id", gap=(pl.col("last") - pl.col("first")).dt.total_seconds() / 86_400
                        / (pl.col("orders") - 1))
    return dict(gaps.iter_rows())


def oldest_unclaimed_activity_at(session: Session) -> datetime | None:
    """When the oldest activity no consumer has claimed yet was recorded (the event-driven path's lag; by the
    primary key, so cheap at any size)."""
    return session.exec(select(CustomerActivity.recorded_at).order_by(CustomerActivity.id).limit(1)).first()
