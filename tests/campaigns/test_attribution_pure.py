"""Attribution (pure): window boundaries, last vs first touch, a customer in two campaigns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from campaigns.measurement.attribution import attribute

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
WEEK = timedelta(days=7)


def frames(orders: list[tuple], touches: list[tuple]) -> tuple[pl.DataFrame, pl.DataFrame]:
    at = pl.Datetime("us", "UTC")
    return (pl.DataFrame(orders, schema={"order_id": pl.Int64, "customer_id": pl.Int64, "ordered_at": at,
                                         "amount_paid": pl.Float64, "discount": pl.Float64}, orient="row"),
            pl.DataFrame(touches, schema={"message_id": pl.Int64, "campaign_id": pl.Int64, "customer_id": pl.Int64,
                                          "channel": pl.String, "sent_at": at}, orient="row"))


def test_the_window_includes_the_send_moment_and_excludes_its_end():
    orders, touches = frames(
        [(1, 1, T0, 10.0, 0.0), (2, 1, T0 + WEEK - timedelta(microseconds=1), 20.0, 0.0), (3, 1, T0 + WEEK, 30.0, 0.0),
         (4, 1, T0 - timedelta(seconds=1), 40.0, 0.0), (5, 2, T0 + timedelta(days=1), 50.0, 0.0)],
        [(100, 7, 1, "sms", T0)])
    result = attribute(orders, touches, WEEK)
    assert result["order_id"].to_list() == [1, 2]  # at the send moment and just before the window closes
    assert result["message_id"].to_list() == [100, 100] and result["revenue"].to_list() == [10.0, 20.0]


def test_a_customer_in_two_campaigns_converts_for_the_last_touch_or_the_first_when_configured():
    orders, touches = frames([(1, 1, T0 + timedelta(days=3), 99.0, 5.0)],
                             [(100, 7, 1, "email", T0), (101, 8, 1, "sms", T0 + timedelta(days=2)),
                              (102, 9, 1, "push", T0 + timedelta(days=4))])  # after the order: never credited
    last = attribute(orders, touches, WEEK, "last")
    first = attribute(orders, touches, WEEK, "first")
    assert last.select("message_id", "campaign_id", "channel").row(0) == (101, 8, "sms")
    assert first.select("message_id", "campaign_id", "channel").row(0) == (100, 7, "email")
    assert last["discount"].to_list() == [5.0] and len(last) == len(first) == 1


def test_nothing_to_attribute_gives_an_empty_frame_with_the_columns():
    orders, touches = frames([(1, 1, T0, 10.0, 0.0)], [])
    assert attribute(orders, touches, WEEK).is_empty()
    assert attribute(orders, touches, WEEK).columns == ["order_id", "message_id", "campaign_id", "customer_id",
                                                         "channel", "ordered_at", "revenue", "discount"]
