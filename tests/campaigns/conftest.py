"""campaigns' test fixtures: a five-customer shop in several zones with segments, tags and orders."""

from __future__ import annotations

import pytest
from sqlmodel import select

from crm.models import Customer
from segmentation.models import CustomerSegment, CustomerTag
from tests.support.factories import csv_text, run

HEADER = ("external_id", "email", "phone", "push_tokens", "time_zone", "locale", "birthday", "signed_up_at",
          "sms_consent", "email_consent", "push_consent", "phone_consent")


@pytest.fixture
def people(session, ctx):
    """Five customers in several zones: P1–P3 potential (P3 without SMS consent), L1 lost, N1 new (first order)."""
    rows = [
        ("P1", "p1@example.com", "+8613800000001", "tok-p1", "Asia/Shanghai", "zh-CN", "1990-11-03",
         "2024-01-01T00:00:00Z", "opted_in", "opted_in", "opted_in", "opted_in"),
        ("P2", "p2@example.com", "+12025550102", "", "America/New_York", "en-US", "1985-02-01",
         "2024-01-01T00:00:00Z", "opted_in", "opted_out", "opted_in", "opted_in"),
        ("P3", "p3@example.com", "+8613800000003", "tok-p3", "Asia/Shanghai", "zh-CN", "", "2024-01-01T00:00:00Z",
         "opted_out", "opted_in", "opted_in", "opted_in"),
        ("L1", "l1@example.com", "", "", "Europe/London", "en-US", "", "2023-01-01T00:00:00Z",
         "opted_in", "opted_in", "opted_in", "opted_in"),
        ("N1", "n1@example.com", "", "", "Australia/Lord_Howe", "en-US", "", "2026-10-01T00:00:00Z",
         "opted_in", "opted_in", "opted_in", "opted_in"),
    ]
    job = run(session, ctx, "customers", csv_text(HEADER, rows))
    assert job.rows_failed == 0, job.errors
    orders = [("o1", "P1", "2026-10-01T10:00:00Z", "1000", "0", "", ""),
              ("o2", "P2", "2026-09-01T10:00:00Z", "1000", "140", "", ""),
              ("o3", "N1", "2026-10-18T10:00:00Z", "80", "0", "", "")]
    job = run(session, ctx, "orders", csv_text(("external_id", "customer_external_id", "ordered_at", "amount_paid",
                                                "discount", "cost_of_goods", "coupon_code"), orders))
    assert job.rows_failed == 0, job.errors
    ids = dict(session.exec(select(Customer.external_id, Customer.id)).all())
    tiers = {"P1": "potential", "P2": "potential", "P3": "potential", "L1": "lost", "N1": "regular"}
    for external, tier in tiers.items():
        session.add(CustomerSegment(customer_id=ids[external], tier=tier, tier_since=ctx.clock.now(),
                                    tier_matched=True, tier_version=1, layer="potential", layer_since=ctx.clock.now(),
                                    layer_matched=True, layer_version=1, r_score=3, f_score=3, m_score=3, rfm="333",
                                    first_seen_at=ctx.clock.now()))
    session.add(CustomerTag(customer_id=ids["N1"], tag="first_order_only", since=ctx.clock.now(), why={}, version=1))
    session.flush()
    return ids
