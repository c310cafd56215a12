"""Tags follow the write path within a minute: a state change re-evaluates that customer's tags as of now."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import select

from crm import writes
from crm.models import Customer, CustomerChange
from segmentation.models import CustomerTag, SegmentTransition
from segmentation.realtime import REALTIME_RUN, refresh_changed_tags
from segmentation.service import run_segmentation
from tests.conftest import TEST_NOW


def _id(session, external_id):
    return session.exec(select(Customer.id).where(Customer.external_id == external_id)).one()


def test_a_cart_abandon_today_tags_the_customer_at_once_and_an_order_untags_them(session, ctx):
    writes.write_items(session, ctx, "customers", [{"external_id": "C1"}, {"external_id": "C2"}], cause="api")
    writes.write_items(session, ctx, "orders", {"external_id": "O1", "customer_id": "C1", "amount_paid": 40,
                                                 "ordered_at": (TEST_NOW - timedelta(days=50)).isoformat()},
                       cause="api")
    run_segmentation(session, ctx, TEST_NOW.replace(hour=0))
    refresh_changed_tags(session, ctx)  # the history's changes: nothing to tag yet
    c1 = _id(session, "C1")
    assert session.get(CustomerTag, (c1, "cart_abandoner")) is None
    # Today, an hour ago: after the nightly run's as-of, so only the real-time step can see it.
    writes.write_items(session, ctx, "events", {"unique_id": "E1", "customer_id": "C1", "type": "cart_abandon",
                                                 "time": (TEST_NOW - timedelta(hours=1)).isoformat()},
                       cause="api", first_wins=True)
    waiting = session.exec(select(CustomerChange).where(CustomerChange.processed_at.is_(None))).all()
    assert [c.customer_id for c in waiting] == [c1]
    done = refresh_changed_tags(session, ctx)
    assert done["customers"] == 1 and done["tags_added"] == 1
    tag = session.get(CustomerTag, (c1, "cart_abandoner"))
    assert tag is not None and tag.since == TEST_NOW
    move = session.exec(select(SegmentTransition).where(SegmentTransition.customer_id == c1,
                                                        SegmentTransition.tag == "cart_abandoner")).one()
    assert move.run_id == REALTIME_RUN and move.to_value == "cart_abandoner"
    assert refresh_changed_tags(session, ctx)["changes"] == 0  # each change is processed once
    writes.write_items(session, ctx, "orders", {"external_id": "O2", "customer_id": "C1", "amount_paid": 30,
                                                 "ordered_at": (TEST_NOW - timedelta(minutes=5)).isoformat()},
                       cause="api")
    assert refresh_changed_tags(session, ctx)["tags_removed"] == 2  # a second order: no longer first_order_only either
    assert {t.tag for t in session.exec(select(CustomerTag).where(CustomerTag.customer_id == c1))} == set()
    assert session.get(CustomerTag, (_id(session, "C2"), "cart_abandoner")) is None
