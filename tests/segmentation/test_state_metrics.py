"""The nightly metrics from the customer state equal the metrics from the raw history, night after night."""

from __future__ import annotations

from datetime import timedelta

import pytest

from crm import state
from crm.service import customers_frame, events_frame, order_flags_frame, orders_frame
from kit.db import session_scope
from segmentation.metrics import MetricParams, compute_metrics, metrics_from_state
from segmentation.service import bring_state_to
from tests.support.shops import FIRE_AT, generated_shop


def _from_history(session, as_of, params):
    orders = orders_frame(session, None, as_of).join(order_flags_frame(session), on="order_id", how="left")
    return compute_metrics(customers_frame(session), orders, events_frame(session, None, as_of), as_of, params)


def _rounded(frame):
    return frame.with_columns(frame[c].round(6) for c, dtype in frame.schema.items() if dtype.is_float()).to_dicts()


def test_state_metrics_equal_history_metrics_across_nights_and_a_month_end(scratch_url, tmp_path):
    ctx = generated_shop(scratch_url, tmp_path, customers=300)
    params = MetricParams()
    night = FIRE_AT.replace(hour=0)
    moved = []
    for days in (0, 1, 2, 17, 18, 60):  # the 17th crosses into December: every busy month moves
        as_of = night + timedelta(days=days)
        with session_scope(ctx.engine) as session:
            done = bring_state_to(session, ctx, as_of, params)
            moved.append(done.get("customers"))
        with session_scope(ctx.engine) as session:
            from_state = metrics_from_state(customers_frame(session), state.state_frame(session), as_of, params)
            assert _rounded(from_state) == _rounded(_from_history(session, as_of, params)), as_of
    # Only customers whose windows moved were recomputed on an ordinary night; a month end touches more.
    assert moved[1] is not None and 0 < moved[1] < 300
    assert moved[3] >= moved[1]


@pytest.mark.parametrize("window_days", [90])
def test_another_tier_window_recomputes_the_state_for_it(scratch_url, tmp_path, window_days):
    ctx = generated_shop(scratch_url, tmp_path, customers=120)
    as_of = FIRE_AT.replace(hour=0)
    params = MetricParams(window_days=window_days)
    with session_scope(ctx.engine) as session:
        bring_state_to(session, ctx, as_of, MetricParams())
    with session_scope(ctx.engine) as session:
        assert bring_state_to(session, ctx, as_of, params)["full"] is True
    with session_scope(ctx.engine) as session:
        from_state = metrics_from_state(customers_frame(session), state.state_frame(session), as_of, params)
        assert _rounded(from_state) == _rounded(_from_history(session, as_of, params))
