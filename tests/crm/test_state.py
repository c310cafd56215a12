"""The customer state: kept by every writer, equal to a rebuild from the raw rows (a hypothesis property)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from crm import privacy, state, writes
from crm.models import Customer, CustomerState
from crm.profiles import ProfileRegistry
from kit.columnar import read_frame
from segmentation.metrics import MetricParams, compute_metrics
from tests.support.factories import run

START = datetime(2026, 1, 1, tzinfo=UTC)
CUSTOMERS = [f"C{i}" for i in range(1, 5)]


def _table(session, name: str, types: dict[str, str], key: list[str]) -> pl.DataFrame:
    columns = ", ".join(f"CAST({c} AS REAL)" if t == "money" and session.get_bind().dialect.name == "sqlite"
                        else (f"CAST({c} AS DOUBLE PRECISION)" if t == "money" else c) for c, t in types.items())
    schema = {c: state._POLARS[t] for c, t in types.items()}
    frame = read_frame(session, f"SELECT {columns} FROM {name}", {}, schema, same_connection=True)
    return frame.with_columns(pl.col(c).round(2) for c, t in types.items() if t == "money").sort(key)


def snapshot(session) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The derived tables as frames, in key order."""
    return (_table(session, "customer_day", state.STORED_DAY_TYPES, ["customer_id", "day"]),
            _table(session, "customer_state", state.STATE_TYPES, ["customer_id"]))


def assert_incremental_equals_rebuilt(session, ctx) -> None:
    """What the writers left is exactly what a rebuild from the raw rows gives."""
    incremental = snapshot(session)
    state.rebuild(session, ctx)
    rebuilt = snapshot(session)
    for kept, fresh in zip(incremental, rebuilt, strict=True):
        assert kept.to_dicts() == fresh.to_dicts()


def _moment(day: int, minute: int) -> str:
    return (START + timedelta(days=day, minutes=minute)).isoformat()


# One operation of a random history: what a shop's integrations and a marketer's tools can do.
# Days over three years and clock moves of up to 300 days: the nightly advance reads only the buckets within the
# longest window (crm.state.horizon_days, 730) and carries the totals, so histories must reach past it.
order_op = st.tuples(st.just("order"), st.integers(1, 8), st.sampled_from(CUSTOMERS), st.integers(0, 1000),
                     st.integers(0, 1439), st.integers(0, 300), st.booleans(), st.integers(0, 20),
                     st.one_of(st.none(), st.integers(0, 150)))
event_op = st.tuples(st.just("event"), st.integers(1, 12), st.sampled_from(CUSTOMERS), st.integers(0, 1000),
                     st.integers(0, 1439), st.sampled_from(["login", "view", "cart_add", "cart_abandon", "search"]))
refund_op = st.tuples(st.just("refund"), st.integers(1, 8), st.integers(1, 60))
cancel_op = st.tuples(st.just("cancel"), st.integers(1, 8))
items_op = st.tuples(st.just("items"), st.integers(1, 8), st.booleans(), st.booleans())
erase_op = st.tuples(st.just("erase"), st.sampled_from(CUSTOMERS))
advance_op = st.tuples(st.just("advance"), st.integers(1, 300))
operations = st.lists(st.one_of(order_op, event_op, refund_op, cancel_op, items_op, erase_op, advance_op),
                      min_size=1, max_size=14)


def _apply(session, ctx, operation, clock_day: list[int]) -> None:
    kind = operation[0]
    if kind == "order":
        _, number, customer, day, minute, amount, coupon, discount, cost = operation
        writes.write_items(session, ctx, "orders", {
            "external_id": f"O{number}", "customer_id": customer, "ordered_at": _moment(day, minute),
            "amount_paid": amount, "coupon_code": "SAVE" if coupon else None, "discount": discount,
            "cost_of_goods": cost}, cause="api")
    elif kind == "event":
        _, number, customer, day, minute, event_type = operation
        if number % 2:  # half through the import, half through the API: one write path either way
            run(session, ctx, "events", "external_id,customer_external_id,occurred_at,type\n"
                f"E{number},{customer},{_moment(day, minute)},{event_type}\n".encode())
        else:
            writes.write_items(session, ctx, "events", {"unique_id": f"E{number}", "customer_id": customer,
                                                         "time": _moment(day, minute), "type": event_type},
                               cause="api", first_wins=True)
    elif kind == "refund":
        _, number, amount = operation
        try:
            writes.refund_order(session, ctx, f"O{number}", {"refund_id": f"R{number}-{amount}", "amount": amount},
                                actor="test")
        except Exception as refused:  # an unknown order, or more than is left to refund: refused, nothing written
            assert type(refused).__name__ in ("NotFound", "InvalidInput")
    elif kind == "cancel":
        _, number = operation
        existing = session.exec(select(Customer.id)).all()
        if existing:
            run(session, ctx, "orders", "external_id,customer_external_id,ordered_at,amount_paid,status\n"
                f"O{number},C1,{_moment(5, number)},10,cancelled\n".encode())
    elif kind == "items":
        _, number, marked_down, new_product = operation
        run(session, ctx, "order_items", "order_external_id,line_no,sku,qty,unit_price,list_price,is_new_product\n"
            f"O{number},1,S1,1,8,{10 if marked_down else 8},{str(new_product).lower()}\n".encode())
    elif kind == "erase":
        _, customer = operation
        privacy.erase_customer(session, ctx, ProfileRegistry(), customer, customer, actor="test")
        # The shop can come back with the same id: a new customer row, as after any erasure.
        writes.write_items(session, ctx, "customers", {"external_id": customer}, cause="api")
    elif kind == "advance":
        clock_day[0] += operation[1]
        state.advance(session, ctx, START + timedelta(days=clock_day[0]))


RESET = ("order_refund", "order_item", "orders", "event", "customer_day", "customer_state", "customer_change",
         "consent_change", "consent", "customer", "state_clock")


def _fresh_shop(session, ctx):
    """Four customers and a state clock at START (inside the test's transaction, which is rolled back)."""
    for table in RESET:
        session.connection().exec_driver_sql(f"DELETE FROM {table}")
    writes.write_items(session, ctx, "customers", [{"external_id": c} for c in CUSTOMERS], cause="api")
    state.advance(session, ctx, START)
    return session


@pytest.fixture
def shop(session, ctx):
    """A fresh shop for one test."""
    return _fresh_shop(session, ctx)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=operations)
def test_incremental_state_equals_rebuilt_for_any_history(shop, ctx, history):
    session = _fresh_shop(shop, ctx)  # every example starts from the same four customers
    clock_day = [0]
    for operation in history:
        _apply(session, ctx, operation, clock_day)
    assert_incremental_equals_rebuilt(session, ctx)


def test_the_nightly_advance_past_the_horizon_carries_totals_and_streaks(shop, ctx):
    session = shop
    horizon = state.horizon_days(state.StateWindows())
    orders = [("C1", 20, 5), ("C1", 60, 0), ("C1", 300, 0), ("C2", 40, 0), ("C2", 900, 7), ("C2", 950, 0),
              ("C3", 10, 0), ("C3", 12, 0)]  # customer, day, discount
    for number, (customer, day, discount) in enumerate(orders, start=1):
        writes.write_items(session, ctx, "orders", {"external_id": f"O{number}", "customer_id": customer,
                                                     "ordered_at": _moment(day, 90), "amount_paid": 10 + number,
                                                     "discount": discount}, cause="api")
    writes.write_items(session, ctx, "events", {"unique_id": "E1", "customer_id": "C3", "time": _moment(15, 0),
                                                 "type": "login"}, cause="api")
    for day in range(100, 1300, 97):  # nights far apart: buckets leave the horizon between two of them
        state.advance(session, ctx, START + timedelta(days=day))
        incremental = snapshot(session)[1]
        assert_incremental_equals_rebuilt(session, ctx)
        assert incremental.to_dicts() == snapshot(session)[1].to_dicts()
    ids = {c.external_id: c.id for c in session.exec(select(Customer)).all()}
    final = {r.customer_id: r for r in session.exec(select(CustomerState)).all()}
    assert horizon < 1264 - 20  # by the last night (day 1264) the discounted order of day 20 left the horizon
    assert final[ids["C1"]].orders_total == 3 and final[ids["C1"]].full_price_streak == 2  # discount at day 20
    assert final[ids["C2"]].full_price_streak == 1 and final[ids["C3"]].lifetime_last_event_at is not None


def test_state_window_columns_match_the_metrics_from_raw_history(shop, ctx):
    session = shop
    for number, (customer, day, amount) in enumerate([("C1", 10, 50), ("C1", 200, 20), ("C2", 380, 70),
                                                      ("C2", 399, 5), ("C3", 30, 15)], start=1):
        writes.write_items(session, ctx, "orders", {"external_id": f"O{number}", "customer_id": customer,
                                                     "ordered_at": _moment(day, 60), "amount_paid": amount,
                                                     "discount": 3 if number == 4 else 0}, cause="api")
    for number, (customer, day, kind) in enumerate([("C1", 395, "login"), ("C2", 398, "cart_abandon"),
                                                    ("C4", 390, "view"), ("C4", 391, "view")], start=1):
        writes.write_items(session, ctx, "events", {"unique_id": f"E{number}", "customer_id": customer,
                                                     "time": _moment(day, 30), "type": kind}, cause="api")
    as_of = START + timedelta(days=400)
    state.advance(session, ctx, as_of)
    rows = {r.customer_id: r for r in session.exec(select(CustomerState)).all()}
    ids = {c.external_id: c.id for c in session.exec(select(Customer)).all()}
    from crm.service import customers_frame, events_frame, order_flags_frame, orders_frame

    orders = orders_frame(session, None, as_of).join(order_flags_frame(session), on="order_id", how="left")
    metrics = compute_metrics(customers_frame(session), orders, events_frame(session, None, as_of), as_of,
                              MetricParams()).rows_by_key("customer_id", named=True, unique=True)
    for external_id in CUSTOMERS:
        row, expected = rows[ids[external_id]], metrics[ids[external_id]]
        assert row.frequency == expected["frequency"]
        assert float(row.monetary) == pytest.approx(expected["monetary"])
        assert row.orders_total == expected["orders_total"]
        assert row.full_price_streak == expected["full_price_streak"]
        assert row.logins_30d == expected["logins_30d"] and row.cart_abandons_30d == expected["cart_abandons_30d"]
    assert rows[ids["C1"]].frequency == 1  # the order of day 10 left the 365-day window
    assert rows[ids["C2"]].full_price_streak == 0  # its newest order was discounted


def test_erasure_removes_the_customers_events_from_the_state(shop, ctx):
    session = shop
    writes.write_items(session, ctx, "events", {"unique_id": "E1", "customer_id": "C1", "time": _moment(3, 0),
                                                 "type": "login"}, cause="api")
    customer_id = session.exec(select(Customer.id).where(Customer.external_id == "C1")).one()
    assert session.get(CustomerState, customer_id).lifetime_last_event_at is not None
    privacy.erase_customer(session, ctx, ProfileRegistry(), "C1", "C1", actor="test")
    row = session.get(CustomerState, customer_id)
    session.refresh(row)
    assert row.lifetime_last_event_at is None
    assert_incremental_equals_rebuilt(session, ctx)


def test_events_past_their_retention_leave_the_state_too(shop, ctx):
    from crm.jobs import clean_core_data

    session = shop
    for number, day in ((1, 0), (2, 300)):
        writes.write_items(session, ctx, "events", {"unique_id": f"E{number}", "customer_id": "C1",
                                                     "time": _moment(day, 0), "type": "login"}, cause="api")
    ctx.settings.event_retention_days = 100
    ctx.clock.now = lambda: START + timedelta(days=301)  # noqa: E731 - a clock standing later
    counts = clean_core_data(session, ctx, None)
    assert counts["events_deleted"] == 1
    assert_incremental_equals_rebuilt(session, ctx)


def test_planning_money_from_the_state_equals_the_raw_orders(shop, ctx):
    from crm.service import money_frame, money_window, order_money_frame, shop_cost_ratio

    session = shop
    today = START + timedelta(days=400)
    year_ago = today - timedelta(days=state.MONEY_DAYS)
    orders = [  # customer, moment, paid, discount, cost, status
        ("C1", year_ago - timedelta(minutes=1), 40, 5, 20, None),  # just outside the year
        ("C1", year_ago, 60, 10, 30, None),  # the first moment inside it
        ("C1", today - timedelta(hours=3), 25, 0, None, None),  # yesterday, cost unknown
        ("C2", today + timedelta(hours=2), 80, 8, 50, None),  # today, before the plan runs
        ("C2", today - timedelta(days=30), 70, 7, 35, "cancelled"),  # cancelled: never money
        ("C3", today - timedelta(days=100), 90, 0, 60, None),  # refunded in part below
    ]
    for number, (customer, moment, paid, discount, cost, status) in enumerate(orders, start=1):
        writes.write_items(session, ctx, "orders", {
            "external_id": f"O{number}", "customer_id": customer, "ordered_at": moment.isoformat(),
            "amount_paid": paid, "discount": discount, "cost_of_goods": cost, "status": status}, cause="api")
    writes.refund_order(session, ctx, "O6", {"refund_id": "R6", "amount": 30}, actor="test")
    now = today + timedelta(hours=5)

    state.advance(session, ctx, today - timedelta(days=1))  # the night has not run yet: the raw orders answer
    fallback, source = money_frame(session, now)
    assert source == "history"
    state.advance(session, ctx, today)
    from_state, source = money_frame(session, now)
    assert source == "state"
    start, end = money_window(now)
    raw = order_money_frame(session, start, end)
    assert from_state.to_dicts() == raw.sort("customer_id").to_dicts() == fallback.sort("customer_id").to_dicts()
    ids = {c.external_id: c.id for c in session.exec(select(Customer)).all()}
    by_customer = from_state.rows_by_key("customer_id", named=True, unique=True)
    assert by_customer[ids["C1"]]["orders"] == 2 and by_customer[ids["C1"]]["spend"] == 85.0
    assert by_customer[ids["C1"]]["cost_known_value"] == 70.0 and by_customer[ids["C1"]]["cost"] == 30.0
    assert by_customer[ids["C2"]]["spend"] == 80.0 and by_customer[ids["C2"]]["discount"] == 8.0
    assert by_customer[ids["C3"]]["spend"] == 60.0  # net of the refund
    one, _ = money_frame(session, now, customer_id=ids["C2"])
    assert one.drop("customer_id").to_dicts() == [by_customer[ids["C2"]]]
    # The shop's cost ratio: the same from the state and from the raw orders (cost 30 + 50 + 60 over 70 + 88 + 60).
    ratio = shop_cost_ratio(session, now)
    assert ratio == pytest.approx(140 / 218)
    state.advance(session, ctx, today + timedelta(days=1))
    assert shop_cost_ratio(session, now) == pytest.approx(ratio)  # the raw orders again, same window


def test_a_shop_whose_goods_cost_nothing_has_a_cost_ratio_of_zero_either_way(shop, ctx):
    from crm.service import shop_cost_ratio

    session = shop
    today = START + timedelta(days=10)
    writes.write_items(session, ctx, "orders", {"external_id": "O1", "customer_id": "C1", "amount_paid": 40,
                                                 "ordered_at": (today - timedelta(days=2)).isoformat(),
                                                 "cost_of_goods": 0}, cause="api")
    now = today + timedelta(hours=5)
    state.advance(session, ctx, today)
    assert shop_cost_ratio(session, now) == 0.0  # from the state
    state.advance(session, ctx, today + timedelta(days=1))
    assert shop_cost_ratio(session, now) == 0.0  # from the raw orders
    assert shop_cost_ratio(session, now + timedelta(days=400)) is None  # no order with a known cost in that year


def test_first_orders_come_from_the_state_and_skip_cancelled_orders(shop, ctx):
    from crm.service import first_orders_frame

    session = shop
    for number, (customer, day, status) in enumerate([("C1", 3, "cancelled"), ("C1", 9, None), ("C2", 12, None)],
                                                     start=1):
        writes.write_items(session, ctx, "orders", {
            "external_id": f"O{number}", "customer_id": customer, "ordered_at": _moment(day, 0), "amount_paid": 10,
            "status": status}, cause="api")
    ids = {c.external_id: c.id for c in session.exec(select(Customer)).all()}
    firsts = dict(first_orders_frame(session, START + timedelta(days=10)).iter_rows())
    assert firsts == {ids["C1"]: START + timedelta(days=9)}  # C2's first order is after the end
    session.get(state.StateClock, 1).params = {"rebuild": True}  # before the first build: the raw orders answer
    session.flush()
    raw = dict(first_orders_frame(session, START + timedelta(days=10)).iter_rows())
    assert raw == firsts
