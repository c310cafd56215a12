"""The customer state: per-customer daily buckets and a summary, kept current by the one write path.

Every write of raw rows (bulk import, ingestion API, shop webhook, refund, erasure) names the (customer, day)
pairs it touched; `refresh` then, in the same transaction, recomputes those days' buckets from the raw rows
and the touched customers' summaries from their buckets. Recomputing a bucket from its raw rows (never adding
a delta) is what makes late, out-of-order, corrected and deleted rows come out right.

The summary's window columns hold values as of the state clock's `as_of` (a UTC midnight: buckets of days
before it count). `advance` moves the clock to the next night and recomputes only the customers whose
windows moved: a bucket entered (written since) or left a window, or a month completed. `rebuild` recomputes
everything from the raw rows; incremental == rebuilt is a tested property.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

import polars as pl
from sqlalchemy import text
from sqlmodel import Session

from crm.models import StateClock
from kit.bulkwrite import fill_empty_table, insert_frame, merge_staged, stage_frame
from kit.columnar import as_float, customer_clause, few, read_columns, read_for_keys, read_frame
from kit.context import Context
from kit.timezones import utc_midnight

UTC_TYPE = pl.Datetime("us", "UTC")


@dataclass(frozen=True)
class StateWindows:
    """The windows the summary keeps values for (the tier rule set's window and the metric look-backs)."""

    window_days: int = 365
    event_lookback_days: int = 180
    recent_days: int = 30
    low_activity_threshold: int = 2
    low_activity_months_max: int = 12

    def as_dict(self) -> dict[str, int]:
        """The windows as stored on the state clock."""
        return asdict(self)


DAY_TYPES = {
    "customer_id": "int", "day": "date", "orders": "int", "net_spend": "money", "discounted_orders": "int",
    "new_product_orders": "int", "full_price_after_discount": "int", "zero_orders": "int",
    "first_order_at": "timestamp", "last_order_at": "timestamp", "last_order_net": "money",
    "last_discounted_at": "timestamp", "events": "int", "logins": "int", "views": "int", "cart_adds": "int",
    "cart_abandons": "int", "last_event_at": "timestamp", "last_login_at": "timestamp",
    "last_abandon_at": "timestamp", "discount": "money", "cost_known_value": "money", "cost_of_goods": "money",
}
# The churn model's windows (churn.features.FeatureConfig's defaults): the summary keeps each feature's value as
# of the clock, so the nightly scoring reads 1M summary rows instead of two years of orders and events.
CHURN_HISTORY_DAYS = 730
CHURN_ORDER_WINDOWS = (30, 90, 180, 365)
CHURN_EVENT_WINDOWS = (7, 30, 90)
CHURN_EVENT_TYPES = {"login": "logins", "view": "views", "cart_add": "cart_adds", "cart_abandon": "cart_abandons"}
CHURN_TYPES = {
    "churn_first_order_at": "timestamp", "churn_orders": "int", "churn_spend": "money", "churn_zero_orders": "int",
    "churn_last_order_value": "money", "churn_purchase_days": "int", "churn_gap_mean": "float",
    "churn_gap_std": "float", "churn_last_gap": "float", "churn_discounted_orders": "int",
    "churn_new_product_orders": "int", "churn_full_price_streak": "int", "churn_last_event_at": "timestamp",
    **{f"churn_orders_{w}d": "int" for w in CHURN_ORDER_WINDOWS},
    **{f"churn_spend_{w}d": "money" for w in CHURN_ORDER_WINDOWS},
    **{f"churn_{kind}_{w}d": "int" for kind in CHURN_EVENT_TYPES for w in CHURN_EVENT_WINDOWS},
}
# Planning's money (discount ceilings, budgets): the trailing year's discount and, where an order's cost of goods is
# known, its list value and cost; its spend and orders are the churn columns of the same window.
MONEY_DAYS = 365
MONEY_TYPES = {"discount_365d": "money", "cost_known_value_365d": "money", "cost_of_goods_365d": "money"}
STATE_TYPES = {
    "customer_id": "int", "lifetime_orders": "int", "lifetime_spend": "money",
    "lifetime_first_order_at": "timestamp", "lifetime_last_order_at": "timestamp",
    "lifetime_last_event_at": "timestamp", "first_order_at": "timestamp", "last_order_at": "timestamp",
    "orders_total": "int", "monetary_total": "money", "frequency": "int", "monetary": "money", "orders_30d": "int",
    "discounted_in_window": "int", "new_product_orders": "int", "full_price_streak": "int",
    "last_event_at": "timestamp", "last_login_at": "timestamp", "last_abandon_at": "timestamp",
    "logins_30d": "int", "views_30d": "int", "cart_abandons_30d": "int", "newest_busy_month": "date",
    **CHURN_TYPES, **MONEY_TYPES,
}
_POLARS = {"int": pl.Int64, "money": pl.Float64, "float": pl.Float64, "timestamp": UTC_TYPE, "date": pl.Date}
BUCKET_SCHEMA = {c: _POLARS[t] for c, t in DAY_TYPES.items()}  # in memory: moments as timestamps
# Stored, a bucket's moments are microseconds since the epoch: the nightly step reads millions of bucket rows, and
# integers cross the wire and parse several times faster than timestamps with a zone.
MOMENTS = tuple(c for c, t in DAY_TYPES.items() if t == "timestamp")
STORED_DAY_TYPES = {c: ("int" if c in MOMENTS else t) for c, t in DAY_TYPES.items()}
DAY_SCHEMA = {c: _POLARS[t] for c, t in STORED_DAY_TYPES.items()}
STATE_SCHEMA = {c: _POLARS[t] for c, t in STATE_TYPES.items()}
_COUNTS = [c for c, t in DAY_TYPES.items() if t == "int" and c != "customer_id"]
_SUMS = [c for c, t in DAY_TYPES.items() if t == "money" and c != "last_order_net"]


def stored(buckets: pl.DataFrame) -> pl.DataFrame:
    """Buckets as the table keeps them (moments as epoch microseconds)."""
    return buckets.with_columns(pl.col(c).dt.epoch("us") for c in MOMENTS)


def loaded(rows: pl.DataFrame) -> pl.DataFrame:
    """Bucket rows read back (moments as UTC timestamps again)."""
    return rows.with_columns(pl.col(c).cast(UTC_TYPE) for c in MOMENTS)
_ORDER_ROWS = {"customer_id": pl.Int64, "ordered_at": UTC_TYPE, "net": pl.Float64, "discounted": pl.Boolean,
               "new_product": pl.Boolean, "discount": pl.Float64, "cost_of_goods": pl.Float64}
_EVENT_ROWS = {"customer_id": pl.Int64, "occurred_at": UTC_TYPE, "type": pl.String}


def _engine(rows: int) -> str:
    """Polars' engine for a query over this many input rows: for a few (a single event's customer), the in-memory
    engine; polars' own choice costs more to start than the query takes (one summary: 11 ms against 5 ms)."""
    return "in-memory" if few(rows) else "auto"


def month_start(moment: date | datetime, back: int = 0) -> date:
    """First day of the month `back` months before the moment's month."""
    index = moment.year * 12 + moment.month - 1 - back
    return date(index // 12, index % 12 + 1, 1)


# ---------------------------------------------------------------- buckets from raw rows


def _order_rows_sql(session: Session, where: str) -> str:
    """Orders that count (not cancelled), net of refunds, with their discount and new-product flags."""
    net, discount, cost = (as_float(session, c) for c in ("o.amount_paid - o.refunded_amount", "o.discount",
                                                          "o.cost_of_goods"))
    return (
        f"SELECT o.customer_id, o.ordered_at, {net}, "
        "(o.discount > 0 OR o.coupon_code IS NOT NULL OR EXISTS (SELECT 1 FROM order_item i WHERE i.order_id = o.id "
        "AND i.unit_price < i.list_price)), "
        "EXISTS (SELECT 1 FROM order_item i WHERE i.order_id = o.id AND i.is_new_product), "
        f"{discount}, {cost} FROM orders o {where} AND o.status <> 'cancelled'")


def buckets_from_rows(orders: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """One bucket per (customer, UTC day) with orders or events: counts, net spend and the day's last moments."""
    order_days = (orders.lazy().with_columns(pl.col("ordered_at").dt.date().alias("day"))
                  .sort("ordered_at").group_by("customer_id", "day").agg(
                      pl.len().alias("orders"), pl.col("net").sum().alias("net_spend"),
                      (pl.col("net") <= 0).sum().alias("zero_orders"),
                      pl.col("ordered_at").min().alias("first_order_at"),
                      pl.col("net").last().alias("last_order_net"),
                      pl.col("discounted").sum().alias("discounted_orders"),
                      pl.col("new_product").sum().alias("new_product_orders"),
                      pl.col("discount").sum().alias("discount"),
                      (pl.col("net") + pl.col("discount")).filter(pl.col("cost_of_goods").is_not_null()).sum()
                      .alias("cost_known_value"),
                      pl.col("cost_of_goods").sum().alias("cost_of_goods"),
                      pl.col("ordered_at").max().alias("last_order_at"),
                      pl.col("ordered_at").filter("discounted").max().alias("last_discounted_at"),
                      # Orders after the day's newest discounted one (strictly later): the day's part of a streak.
                      pl.col("ordered_at").filter(pl.col("ordered_at") > pl.col("ordered_at").filter("discounted")
                                                  .max()).len().alias("_after")))
    order_days = order_days.with_columns(
        pl.when(pl.col("last_discounted_at").is_null()).then(pl.col("orders")).otherwise(pl.col("_after"))
        .alias("full_price_after_discount")).drop("_after")
    kind = pl.col("type")
    event_days = (events.lazy().with_columns(pl.col("occurred_at").dt.date().alias("day"))
                  .group_by("customer_id", "day").agg(
                      pl.len().alias("events"), (kind == "login").sum().alias("logins"),
                      (kind == "view").sum().alias("views"), (kind == "cart_add").sum().alias("cart_adds"),
                      (kind == "cart_abandon").sum().alias("cart_abandons"),
                      pl.col("occurred_at").max().alias("last_event_at"),
                      pl.col("occurred_at").filter(kind == "login").max().alias("last_login_at"),
                      pl.col("occurred_at").filter(kind == "cart_abandon").max().alias("last_abandon_at")))
    joined = order_days.join(event_days, on=["customer_id", "day"], how="full", coalesce=True)
    return (joined.with_columns(*[pl.col(c).fill_null(0) for c in _COUNTS],
                                *[pl.col(c).fill_null(0.0) for c in _SUMS])
            .select(list(DAY_TYPES)).cast(BUCKET_SCHEMA).sort("customer_id", "day").collect(
                engine=_engine(len(orders) + len(events))))


# ---------------------------------------------------------------- summaries from buckets


def summarise(customer_ids: pl.Series, days: pl.DataFrame, as_of: datetime, windows: StateWindows) -> pl.DataFrame:
    """The state row of each customer from their buckets: lifetime columns over all, window columns as of `as_of`."""
    as_of_day = as_of.date()
    window_start = as_of_day - timedelta(days=windows.window_days)
    recent_start = as_of_day - timedelta(days=windows.recent_days)
    lookback_start = as_of_day - timedelta(days=windows.event_lookback_days)
    day = pl.col("day")
    before = day < as_of_day
    in_window, recent = before & (day >= window_start), before & (day >= recent_start)
    looked_back = before & (day >= lookback_start)
    lazy = days.lazy()
    summary = lazy.group_by("customer_id").agg(
        pl.col("orders").sum().alias("lifetime_orders"), pl.col("net_spend").sum().alias("lifetime_spend"),
        pl.col("first_order_at").min().alias("lifetime_first_order_at"),
        pl.col("last_order_at").max().alias("lifetime_last_order_at"),
        pl.col("last_event_at").max().alias("lifetime_last_event_at"),
        pl.col("first_order_at").filter(before).min().alias("first_order_at"),
        pl.col("last_order_at").filter(before).max().alias("last_order_at"),
        pl.col("orders").filter(before).sum().alias("orders_total"),
        pl.col("net_spend").filter(before).sum().alias("monetary_total"),
        pl.col("orders").filter(in_window).sum().alias("frequency"),
        pl.col("net_spend").filter(in_window).sum().alias("monetary"),
        pl.col("orders").filter(recent).sum().alias("orders_30d"),
        pl.col("discounted_orders").filter(in_window).sum().alias("discounted_in_window"),
        pl.col("new_product_orders").filter(in_window).sum().alias("new_product_orders"),
        pl.col("day").filter(before & (pl.col("discounted_orders") > 0)).max().alias("_last_discount_day"),
        pl.col("last_event_at").filter(looked_back).max().alias("last_event_at"),
        pl.col("last_login_at").filter(looked_back).max().alias("last_login_at"),
        pl.col("last_abandon_at").filter(looked_back).max().alias("last_abandon_at"),
        pl.col("logins").filter(recent).sum().alias("logins_30d"),
        pl.col("views").filter(recent).sum().alias("views_30d"),
        pl.col("cart_abandons").filter(recent).sum().alias("cart_abandons_30d"),
        *_churn_windows(as_of_day),
    )
    streak = (lazy.join(summary.select("customer_id", "_last_discount_day"), on="customer_id")
              .filter(before & pl.col("_last_discount_day").is_not_null() & (day >= pl.col("_last_discount_day")))
              .group_by("customer_id").agg(
                  (pl.col("full_price_after_discount").filter(day == pl.col("_last_discount_day")).sum()
                   + pl.col("orders").filter(day > pl.col("_last_discount_day")).sum()).alias("_streak")))
    months_back = windows.low_activity_months_max
    since = max(month_start(as_of_day, months_back), lookback_start)
    actions = (pl.when(looked_back).then(pl.col("events")).otherwise(0) + pl.col("orders"))
    busy = (lazy.filter(before & (day >= since) & (day < month_start(as_of_day)))
            .with_columns(actions.alias("_actions"), day.dt.truncate("1mo").alias("_month"))
            .group_by("customer_id", "_month").agg(pl.col("_actions").sum())
            .filter(pl.col("_actions") >= windows.low_activity_threshold)
            .group_by("customer_id").agg(pl.col("_month").max().alias("newest_busy_month")))
    frame = (pl.DataFrame({"customer_id": customer_ids.unique()}).lazy()
             .join(summary, on="customer_id", how="left").join(streak, on="customer_id", how="left")
             .join(busy, on="customer_id", how="left").join(_churn_history(lazy, as_of_day), on="customer_id",
                                                           how="left"))
    counts = [c for c, t in STATE_TYPES.items()
              if t == "int" and c not in ("customer_id", "full_price_streak", "churn_full_price_streak")]
    money = [c for c, t in STATE_TYPES.items() if t == "money" and c != "churn_last_order_value"]
    frame = frame.with_columns(
        *[pl.col(c).fill_null(0) for c in counts],
        *[pl.col(c).fill_null(0.0).round(2) for c in money],
        pl.when(pl.col("_last_discount_day").is_null()).then(pl.col("orders_total").fill_null(0))
        .otherwise(pl.col("_streak").fill_null(0)).alias("full_price_streak"),
    ).with_columns(
        # The churn features see two years: a streak that began with an older discount is all of its orders.
        pl.when(pl.col("_last_discount_day") >= as_of_day - timedelta(days=CHURN_HISTORY_DAYS))
        .then(pl.col("full_price_streak")).otherwise(pl.col("churn_orders")).alias("churn_full_price_streak"),
    )
    return frame.select(list(STATE_TYPES)).cast(STATE_SCHEMA).sort("customer_id").collect(engine=_engine(len(days)))


def _churn_windows(as_of_day: date) -> list[pl.Expr]:
    """The churn features' window sums as of the clock's day (the last w UTC days before it)."""
    day = pl.col("day")
    since = {w: (day < as_of_day) & (day >= as_of_day - timedelta(days=w))
             for w in {*CHURN_ORDER_WINDOWS, *CHURN_EVENT_WINDOWS, CHURN_HISTORY_DAYS, MONEY_DAYS}}
    history = since[CHURN_HISTORY_DAYS]
    return [
        *[pl.col("orders").filter(since[w]).sum().alias(f"churn_orders_{w}d") for w in CHURN_ORDER_WINDOWS],
        *[pl.col("net_spend").filter(since[w]).sum().alias(f"churn_spend_{w}d") for w in CHURN_ORDER_WINDOWS],
        *[pl.col(column).filter(since[w]).sum().alias(f"churn_{kind}_{w}d")
          for kind, column in CHURN_EVENT_TYPES.items() for w in CHURN_EVENT_WINDOWS],
        pl.col("last_event_at").filter(since[max(CHURN_EVENT_WINDOWS)]).max().alias("churn_last_event_at"),
        pl.col("orders").filter(history).sum().alias("churn_orders"),
        pl.col("net_spend").filter(history).sum().alias("churn_spend"),
        pl.col("zero_orders").filter(history).sum().alias("churn_zero_orders"),
        pl.col("discounted_orders").filter(history).sum().alias("churn_discounted_orders"),
        pl.col("new_product_orders").filter(history).sum().alias("churn_new_product_orders"),
        *[pl.col(column).filter(since[MONEY_DAYS]).sum().alias(f"{column}_{MONEY_DAYS}d")
          for column in ("discount", "cost_known_value", "cost_of_goods")],
    ]


def _churn_history(days: pl.LazyFrame, as_of_day: date) -> pl.LazyFrame:
    """Purchase-day statistics over the churn history: first order, last order's value, gaps between purchase days."""
    day, customer = pl.col("day"), pl.col("customer_id")
    start = as_of_day - timedelta(days=CHURN_HISTORY_DAYS)
    # One sort, then each gap against the row before it: per-group sorts and diffs cost polars a call per customer.
    gap = (pl.when(customer == customer.shift(1)).then((day - day.shift(1)).dt.total_days()).cast(pl.Float64))
    purchase_days = (days.filter((day < as_of_day) & (day >= start) & (pl.col("orders") > 0))
                     .select("customer_id", "day", "first_order_at", "last_order_net").sort("customer_id", "day")
                     .with_columns(gap.alias("_gap")))
    return purchase_days.group_by("customer_id").agg(
        pl.col("first_order_at").min().alias("churn_first_order_at"),
        pl.col("last_order_net").last().alias("churn_last_order_value"),
        pl.len().alias("churn_purchase_days"), pl.col("_gap").mean().alias("churn_gap_mean"),
        pl.col("_gap").std().alias("churn_gap_std"), pl.col("_gap").last().alias("churn_last_gap"))


def _stage_days(session: Session, name: str, days: pl.DataFrame) -> None:
    """Stage (customer_id, day) pairs with the day's UTC bounds, for range joins on the raw rows' index."""
    keys = days.with_columns(pl.col("day").cast(UTC_TYPE).alias("day_start"))
    keys = keys.with_columns((pl.col("day_start") + pl.duration(days=1)).alias("day_end"))
    stage_frame(session, name, keys, {"customer_id": "int", "day": "date", "day_start": "timestamp",
                                      "day_end": "timestamp"})


# ---------------------------------------------------------------- the clock


def clock(session: Session) -> StateClock | None:
    """The state clock's row (None before the first rebuild or write)."""
    return session.get(StateClock, 1)


def _ensure_clock(session: Session, ctx: Context, windows: StateWindows | None = None, *,
                  exclusive: bool = False) -> StateClock:
    # Writers share the clock's row lock, the nightly advance takes it alone: a refresh never computes windows
    # for a day the clock is leaving (PostgreSQL; SQLite has one writer at a time anyway).
    lock = True if exclusive else {"read": True}
    row = session.get(StateClock, 1, with_for_update=lock, populate_existing=True)
    if row is None:  # the first write ever; two at once both try, one row results
        now = ctx.clock.now()
        if session.get_bind().dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        session.connection().execute(insert(StateClock.__table__).values(
            id=1, as_of=utc_midnight(now.date()), params=(windows or StateWindows()).as_dict(), advanced_at=now)
            .on_conflict_do_nothing(index_elements=["id"]))
        row = session.get(StateClock, 1, with_for_update=lock, populate_existing=True)
    return row


def windows_of(row: StateClock) -> StateWindows:
    """The windows the state was computed with (the defaults for a clock still waiting for its rebuild)."""
    return StateWindows(**{k: v for k, v in row.params.items() if k != "rebuild"})


def needs_rebuild(row: StateClock | None) -> bool:
    """Whether the state must be derived from the raw rows once: never built, or emptied by an upgrade."""
    return row is None or bool(row.params.get("rebuild"))


# ---------------------------------------------------------------- the write path's step


def refresh(session: Session, ctx: Context, touched: pl.DataFrame, *, cause: str) -> int:
    """Recompute the buckets of the touched (customer_id, day) pairs and those customers' state rows.

    Called by every writer inside its own transaction, after its raw rows are written; `day` may be null for a
    customer whose raw rows did not change (a new or updated customer: only its state row is ensured).
    Returns how many state rows changed; each change is recorded as a `customer_change` event.
    """
    if touched.is_empty():
        return 0
    row = _ensure_clock(session, ctx)
    keys = touched.select(pl.col("customer_id").cast(pl.Int64), pl.col("day").cast(pl.Date)).unique()
    lock_customers(session, keys["customer_id"].unique())
    day_keys = keys.drop_nulls("day")
    if not day_keys.is_empty():
        _rebucket(session, day_keys)
    customers = keys["customer_id"].unique()
    return _resummarise(session, ctx, customers, row.as_of, windows_of(row), cause=cause)


def lock_customers(session: Session, customers: pl.Series) -> None:
    """Take the customers' state rows (in id order, so two writers never deadlock) before reading their raw rows.

    Two transactions writing one customer's day would otherwise both recompute the bucket without the other's
    rows and collide on its key; under the lock the later one reads (READ COMMITTED) what the first committed.
    """
    if session.get_bind().dialect.name != "postgresql" or customers.is_empty():
        return
    stage_frame(session, "stage_lock_customers", pl.DataFrame({"customer_id": customers.sort()}),
                {"customer_id": "int"})
    session.connection().execute(text(
        "SELECT s.customer_id FROM customer_state s JOIN stage_lock_customers k ON k.customer_id = s.customer_id "
        "ORDER BY s.customer_id FOR UPDATE OF s"))


def _rebucket(session: Session, day_keys: pl.DataFrame) -> None:
    _stage_days(session, "stage_state_days", day_keys)
    on = ("JOIN stage_state_days k ON {t}.customer_id = k.customer_id AND {t}.{at} >= k.day_start "
          "AND {t}.{at} < k.day_end")
    orders = read_frame(session, _order_rows_sql(session, on.format(t="o", at="ordered_at") + " WHERE 1 = 1"), {},
                        _ORDER_ROWS, same_connection=True, small=few(len(day_keys)))
    events = read_frame(session, "SELECT e.customer_id, e.occurred_at, e.type FROM event e "
                        + on.format(t="e", at="occurred_at"), {}, _EVENT_ROWS, same_connection=True,
                        small=few(len(day_keys)))
    buckets = buckets_from_rows(orders, events)
    connection = session.connection()
    connection.execute(text("DELETE FROM customer_day WHERE (customer_id, day) IN "
                            "(SELECT customer_id, day FROM stage_state_days)"))
    insert_frame(session, "customer_day", stored(buckets), STORED_DAY_TYPES)


def _select_list(session: Session, alias: str, types: dict[str, str]) -> str:
    """The columns of a derived table in `types` order, money read as floats."""
    return ", ".join(as_float(session, f"{alias}.{c}") if t == "money" else f"{alias}.{c}" for c, t in types.items())


def _day_columns(session: Session) -> str:
    return _select_list(session, "d", DAY_TYPES)


def _days_of(session: Session, customers: pl.Series, since: date | None = None, *,
             committed: bool = False) -> pl.DataFrame:
    """The customers' buckets (those of `since` and after, when given); `committed`: see `read_for_keys`."""
    recent = "WHERE d.day >= :since" if since is not None else ""
    params = {"since": since} if since is not None else {}
    return loaded(read_for_keys(session, f"SELECT {_day_columns(session)} FROM customer_day d JOIN {{keys}} k "
                                f"ON k.key = d.customer_id {recent}", customers, params, DAY_SCHEMA,
                                committed=committed))


def _resummarise(session: Session, ctx: Context, customers: pl.Series, as_of: datetime, windows: StateWindows, *,
                 cause: str) -> int:
    return _write_summaries(session, ctx, summarise(customers, _days_of(session, customers), as_of, windows),
                            cause=cause)


def _write_summaries(session: Session, ctx: Context, rows: pl.DataFrame, *, cause: str) -> int:
    now = ctx.clock.now()
    stage_frame(session, "stage_state", rows, STATE_TYPES)
    inserted, updated = merge_staged(
        session, table="customer_state", stage="stage_state", key=["customer_id"], columns=list(STATE_TYPES),
        compare=[c for c in STATE_TYPES if c != "customer_id"], params={"now": now},
        insert_extra={"updated_at": ":now"}, update_extra={"updated_at": ":now"})
    if inserted + updated and cause != "advance":
        # The customers whose row was just written carry this transaction's stamp: they are the changes.
        session.connection().execute(text(
            "INSERT INTO customer_change (customer_id, at, cause) SELECT s.customer_id, :now, :cause "
            "FROM stage_state s JOIN customer_state t ON t.customer_id = s.customer_id WHERE t.updated_at = :now"),
            {"now": now, "cause": cause})
    return inserted + updated


def horizon_days(windows: StateWindows) -> int:
    """How far back any window column looks; older buckets count only in the lifetime and total columns."""
    months = 31 * (windows.low_activity_months_max + 1)
    return max(windows.window_days, windows.event_lookback_days, windows.recent_days, CHURN_HISTORY_DAYS, MONEY_DAYS,
               *CHURN_ORDER_WINDOWS, *CHURN_EVENT_WINDOWS, months)


# Columns over all of a customer's days (lifetime) or all days before the clock (totals): a forward advance
# carries them from the stored row plus the days the clock passed, without reading buckets older than the horizon.
_CARRIED = ("lifetime_orders", "lifetime_spend", "lifetime_first_order_at", "lifetime_last_order_at",
            "lifetime_last_event_at", "first_order_at", "last_order_at", "orders_total", "monetary_total",
            "full_price_streak")


def _advanced_summaries(session: Session, customers: pl.Series, old: datetime, new: datetime,
                        windows: StateWindows) -> pl.DataFrame | None:
    """The customers' rows as of `new` from their buckets within the horizon and their stored rows as of `old`
    (None when some customer has no stored row: the caller reads everything)."""
    old_day, new_day = old.date(), new.date()
    # Committed reads over two connections at once: the advance holds the clock alone, so no writer can refresh a
    # bucket or a row until it commits, and it has written none itself yet.
    days = _days_of(session, customers, since=new_day - timedelta(days=horizon_days(windows)), committed=True)
    schema = {c: STATE_SCHEMA[c] for c in ("customer_id", *_CARRIED)}
    columns = ", ".join(as_float(session, f"t.{c}") if STATE_TYPES[c] == "money" else f"t.{c}" for c in schema)
    stored_rows = read_for_keys(session, f"SELECT {columns} FROM customer_state t JOIN {{keys}} k "
                                "ON k.key = t.customer_id", customers, {}, schema, committed=True)
    if stored_rows.height != customers.n_unique():
        return None
    fresh = summarise(customers, days, new, windows)
    day = pl.col("day")
    passed = (days.filter((day >= old_day) & (day < new_day)).group_by("customer_id")
              .agg(pl.col("orders").sum().alias("_orders"), pl.col("net_spend").sum().alias("_spend")))
    discounted = (days.filter((day < new_day) & (pl.col("discounted_orders") > 0)).select("customer_id").unique()
                  .with_columns(pl.lit(True).alias("_discount_in_horizon")))
    was = {c: pl.col(f"{c}_was") for c in _CARRIED}
    merged = (fresh.join(stored_rows.rename({c: f"{c}_was" for c in _CARRIED}), on="customer_id", how="left")
              .join(passed, on="customer_id", how="left").join(discounted, on="customer_id", how="left")
              .with_columns(pl.col("_orders").fill_null(0), pl.col("_spend").fill_null(0.0)))
    merged = merged.with_columns(
        *[was[c].alias(c) for c in _CARRIED if c.startswith("lifetime_")],
        pl.min_horizontal(was["first_order_at"], pl.col("first_order_at")).alias("first_order_at"),
        pl.max_horizontal(was["last_order_at"], pl.col("last_order_at")).alias("last_order_at"),
        (was["orders_total"] + pl.col("_orders")).alias("orders_total"),
        (was["monetary_total"] + pl.col("_spend")).round(2).alias("monetary_total"),
        # A discount within the horizon bounds the streak (the fresh value); otherwise it runs on from the stored one.
        pl.when(pl.col("_discount_in_horizon").fill_null(False)).then(pl.col("full_price_streak"))
        .otherwise(was["full_price_streak"] + pl.col("_orders")).alias("full_price_streak"))
    return merged.select(list(STATE_TYPES)).cast(STATE_SCHEMA)


# ---------------------------------------------------------------- nightly advance and rebuild


def moved_customers(session: Session, old: datetime, new: datetime, windows: StateWindows) -> pl.Series:
    """Customers whose window columns differ between two clock values though none of their rows changed."""
    old_day, new_day = old.date(), new.date()
    if old_day > new_day:  # moved back (a backfill): the same days, seen from the other side
        old_day, new_day = new_day, old_day
    ranges = [(old_day, new_day)]
    lengths = {windows.window_days, windows.recent_days, windows.event_lookback_days, CHURN_HISTORY_DAYS,
               *CHURN_ORDER_WINDOWS, *CHURN_EVENT_WINDOWS, MONEY_DAYS}
    for length in lengths:
        ranges.append((old_day - timedelta(days=length), new_day - timedelta(days=length)))
    if month_start(old_day) != month_start(new_day):  # a month completed: busy months move for everyone in it
        back = windows.low_activity_months_max
        ranges.append((month_start(old_day), month_start(new_day)))
        ranges.append((month_start(old_day, back), month_start(new_day, back)))
    condition = " OR ".join(f"(d.day >= :start{i} AND d.day < :end{i})" for i in range(len(ranges)))
    params = {f"start{i}": a for i, (a, _) in enumerate(ranges)} | {f"end{i}": b for i, (_, b) in enumerate(ranges)}
    frame = read_frame(session, f"SELECT DISTINCT d.customer_id FROM customer_day d WHERE {condition}", params,
                       {"customer_id": pl.Int64}, same_connection=True)
    return frame["customer_id"]


def advance(session: Session, ctx: Context, as_of: datetime, windows: StateWindows | None = None) -> dict[str, Any]:
    """Move the clock to `as_of` (a UTC midnight), recomputing only the customers whose windows moved.

    Other windows than the stored ones (a marketer changed the tier window) mean a full recompute from buckets.
    """
    row = _ensure_clock(session, ctx, windows, exclusive=True)
    windows = windows or windows_of(row)
    if windows != windows_of(row):
        rows = resummarise_all(session, ctx, as_of, windows)
        return {"customers": rows, "full": True}
    if as_of == row.as_of:
        return {"customers": 0, "full": False}
    customers = moved_customers(session, row.as_of, as_of, windows)
    lock_customers(session, customers)
    old_as_of = row.as_of
    row.as_of, row.advanced_at = as_of, ctx.clock.now()
    session.add(row)
    session.flush()
    if not len(customers):
        return {"customers": 0, "changed": 0, "full": False}
    forward = old_as_of < as_of <= old_as_of + timedelta(days=horizon_days(windows))
    rows = _advanced_summaries(session, customers, old_as_of, as_of, windows) if forward else None
    if rows is None:  # moved back (a backfill) or far ahead, or a customer without a row: every bucket of theirs
        rows = summarise(customers, _days_of(session, customers), as_of, windows)
    return {"customers": len(customers), "changed": _write_summaries(session, ctx, rows, cause="advance"),
            "full": False}


def _all_buckets_from_raw(session: Session, uncommitted: bool) -> pl.DataFrame:
    orders = read_frame(session, _order_rows_sql(session, "WHERE 1 = 1"), {}, _ORDER_ROWS,
                        same_connection=uncommitted)
    events = read_frame(session, "SELECT e.customer_id, e.occurred_at, e.type FROM event e", {}, _EVENT_ROWS,
                        same_connection=uncommitted)
    return buckets_from_rows(orders, events)


def resummarise_all(session: Session, ctx: Context, as_of: datetime, windows: StateWindows) -> int:
    """Recompute every customer's state row from the buckets as of `as_of` with `windows`."""
    days = read_frame(session, f"SELECT {_day_columns(session)} FROM customer_day d", {}, DAY_SCHEMA,
                      same_connection=True)
    days = loaded(days)
    return _replace_state(session, ctx, days, as_of, windows, uncommitted=True)


def _replace_state(session: Session, ctx: Context, days: pl.DataFrame, as_of: datetime,
                   windows: StateWindows, *, uncommitted: bool) -> int:
    customers = read_frame(session, "SELECT c.id FROM customer c", {}, {"customer_id": pl.Int64},
                           same_connection=uncommitted)["customer_id"]
    rows = summarise(customers, days, as_of, windows).with_columns(updated_at=pl.lit(ctx.clock.now()))
    pg = session.get_bind().dialect.name == "postgresql"
    session.connection().execute(text("TRUNCATE customer_state" if pg else "DELETE FROM customer_state"))
    fill_empty_table(session, "customer_state", rows, STATE_TYPES | {"updated_at": "timestamp"})
    row = _ensure_clock(session, ctx, windows)
    row.as_of, row.params, row.advanced_at = as_of, windows.as_dict(), ctx.clock.now()
    session.add(row)
    session.flush()
    return len(rows)


def rebuild(session: Session, ctx: Context, as_of: datetime | None = None,
            windows: StateWindows | None = None, *, uncommitted: bool = True) -> dict[str, int]:
    """Recompute the whole state (buckets and summaries) from the raw rows; the clock keeps its day unless given.

    `uncommitted=False` reads the raw rows through the fast columnar path, which sees committed rows only (the
    `crm state rebuild` command); inside a writer's transaction the rows are read on its own connection.
    """
    row = _ensure_clock(session, ctx, windows, exclusive=True)
    as_of = as_of or row.as_of
    windows = windows or windows_of(row)
    buckets = _all_buckets_from_raw(session, uncommitted)
    pg = session.get_bind().dialect.name == "postgresql"
    session.connection().execute(text("TRUNCATE customer_day" if pg else "DELETE FROM customer_day"))
    fill_empty_table(session, "customer_day", stored(buckets), STORED_DAY_TYPES)
    customers = _replace_state(session, ctx, buckets, as_of, windows, uncommitted=uncommitted)
    return {"days": len(buckets), "customers": customers}


def touched_days(frame: pl.DataFrame, customer: str, moment: str) -> pl.DataFrame:
    """(customer_id, day) pairs of a frame of written rows."""
    return frame.select(pl.col(customer).cast(pl.Int64).alias("customer_id"),
                        pl.col(moment).dt.date().alias("day"))


def state_frame(session: Session, *, customer_id: int | None = None, reader: Any = None) -> pl.DataFrame:
    """Every customer's (or one customer's) state row as a frame (money as floats)."""
    columns = _select_list(session, "s", STATE_TYPES)
    one = "WHERE s.customer_id = :customer_id" if customer_id is not None else ""
    params = {"customer_id": customer_id} if customer_id is not None else {}
    query = f"SELECT {columns} FROM customer_state s {one}"
    return read_columns(session, reader, query, params, STATE_SCHEMA, one_customer=customer_id is not None)


def _current_for(session: Session, now: datetime) -> bool:
    """Whether the stored window columns are as of now's UTC midnight (the night's advance has run)."""
    row = clock(session)
    return not needs_rebuild(row) and row.as_of == utc_midnight(now.date())


_MONEY_SCHEMA = {"customer_id": pl.Int64, "spend": pl.Float64, "discount": pl.Float64, "orders": pl.Int64,
                 "cost_known_value": pl.Float64, "cost": pl.Float64}


def money_frame(session: Session, now: datetime, *, customer_id: int | None = None,
                customer_ids: list[int] | None = None, reader: Any = None) -> pl.DataFrame | None:
    """Per customer with orders in the trailing year or today: spend, discount, orders, and list value and cost
    where cost is known (crm.service.money_window); None when the clock is not at now's UTC midnight."""
    if not _current_for(session, now):
        return None
    money = [f"churn_spend_{MONEY_DAYS}d", *MONEY_TYPES]
    columns = ", ".join(["s.customer_id", *(as_float(session, f"s.{c}") for c in money), f"s.churn_orders_{MONEY_DAYS}d"])
    one, params, one_customer = customer_clause("s.customer_id", customer_id, customer_ids, keyword="AND")
    schema = {"customer_id": pl.Int64, "spend": pl.Float64, "discount": pl.Float64, "cost_known_value": pl.Float64,
              "cost": pl.Float64, "orders": pl.Int64}
    query = f"SELECT {columns} FROM customer_state s WHERE s.churn_orders_{MONEY_DAYS}d > 0 {one}"
    today_columns = ", ".join(["d.customer_id", *(as_float(session, f"d.{c}") for c in (
        "net_spend", "discount", "cost_known_value", "cost_of_goods")), "d.orders"])
    today_query = (f"SELECT {today_columns} FROM customer_day d WHERE d.day = :today AND d.orders > 0 "
                   + one.replace("s.", "d."))
    year = read_columns(session, reader, query, params, schema, one_customer=one_customer)
    today = read_columns(session, reader, today_query, params | {"today": now.date()}, schema,
                         one_customer=one_customer)
    return (pl.concat([year, today]).group_by("customer_id").agg(pl.col(c).sum() for c in schema if c != "customer_id")
            .select(list(_MONEY_SCHEMA)).cast(_MONEY_SCHEMA).sort("customer_id"))


def shop_cost_totals(session: Session, now: datetime) -> tuple[float | None, float | None] | None:
    """The shop's cost of goods and the list value of the orders with a known cost over the money window, from the
    state; None when the clock is not at now's UTC midnight."""
    if not _current_for(session, now):
        return None
    year = read_frame(session, f"SELECT SUM({as_float(session, 's.cost_of_goods_365d')}), "
                      f"SUM({as_float(session, 's.cost_known_value_365d')}) FROM customer_state s", {},
                      {"cost": pl.Float64, "value": pl.Float64}, small=True)
    today = read_frame(session, f"SELECT SUM({as_float(session, 'd.cost_of_goods')}), "
                       f"SUM({as_float(session, 'd.cost_known_value')}) FROM customer_day d WHERE d.day = :today",
                       {"today": now.date()}, {"cost": pl.Float64, "value": pl.Float64}, small=True)
    both = pl.concat([year, today]).fill_null(0.0).sum()
    return both["cost"][0], both["value"][0]  # no known cost at all: value 0, and the ratio says None


def customers_as_of(session: Session, customer_ids: pl.Series, as_of: datetime,
                    windows: StateWindows) -> pl.DataFrame:
    """State rows of a few customers computed from their buckets as of any midnight (e.g. tomorrow's: everything
    written so far counts), without touching the stored state."""
    return summarise(customer_ids, _days_of(session, customer_ids), as_of, windows)


def claim_changes(session: Session, limit: int) -> pl.DataFrame:
    """The oldest unprocessed state-change events (id, customer_id); on PostgreSQL locked against other workers."""
    pg = session.get_bind().dialect.name == "postgresql"
    lock = " FOR UPDATE SKIP LOCKED" if pg else ""
    return read_frame(session, "SELECT c.id, c.customer_id FROM customer_change c WHERE c.processed_at IS NULL "
                      f"ORDER BY c.id LIMIT :limit{lock}", {"limit": limit},
                      {"id": pl.Int64, "customer_id": pl.Int64}, same_connection=True)


def mark_processed(session: Session, change_ids: list[int], at: datetime) -> None:
    """Mark state-change events done."""
    if change_ids:
        stage_frame(session, "stage_change_ids", pl.DataFrame({"id": change_ids}), {"id": "int"})
        session.connection().execute(text("UPDATE customer_change SET processed_at = :at "
                                          "WHERE id IN (SELECT id FROM stage_change_ids)"), {"at": at})


def window_spend_of_buyers(session: Session) -> pl.Series:
    """The window spend of every customer with an order in the window (for ranking a few customers against all)."""
    return read_frame(session, f"SELECT {as_float(session, 's.monetary')} FROM customer_state s WHERE s.frequency > 0",
                      {}, {"monetary": pl.Float64}, same_connection=True)["monetary"]
