"""Segmentation service and API on a real database: runs write only changes, hysteresis, profile, rule sets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func
from sqlmodel import select

from crm.models import AuditLog, Customer, Role
from segmentation.models import CustomerSegment, CustomerTag, SegmentTransition, SegmentValueStep
from segmentation.service import (
    current_rule_set,
    customer_metrics,
    newest_run_brief,
    put_rule_set,
    run_segmentation,
)
from tests.support.factories import ORDER_HEADER, csv_text, customers, run

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


def _orders(session, ctx, rows):
    """rows: (order id, customer, days before AS_OF, amount, discount)."""
    data = [(oid, cust, (AS_OF - timedelta(days=days)).isoformat(), amount, discount, "", "")
            for oid, cust, days, amount, discount in rows]
    job = run(session, ctx, "orders", csv_text(ORDER_HEADER, data))
    assert job.rows_failed == 0, job.errors


def _shop(session, ctx):
    """C1 a VIP, C2 a potential, C3 a regular, C4 lost, C5 never ordered."""
    customers(session, ctx, 5)
    _orders(session, ctx, [
        *[(f"A{i}", "C1", 5 + i, 600, 0) for i in range(4)],
        ("B1", "C2", 40, 300, 20), ("B2", "C2", 60, 300, 20),
        ("C1", "C3", 120, 150, 0),
        ("D1", "C4", 400, 80, 0),
    ])


def _tiers(session) -> dict[str, str]:
    rows = session.exec(select(Customer.external_id, CustomerSegment.tier)
                        .join(CustomerSegment, CustomerSegment.customer_id == Customer.id)).all()
    return dict(rows)


def _count(session, model) -> int:
    return session.exec(select(func.count()).select_from(model)).one()


def test_first_run_assigns_everyone_and_a_rerun_writes_nothing(session, ctx):
    _shop(session, ctx)
    first = run_segmentation(session, ctx, AS_OF)
    assert _tiers(session) == {"C1": "VIP", "C2": "potential", "C3": "regular", "C4": "lost", "C5": "lost"}
    assert first.changes["state_rows_written"] == 5
    assert first.distribution["tier"]["VIP"]["customers"] == 1
    assert first.distribution["tier"]["VIP"]["expected_share"] == 0.08
    tags = {(t.customer_id, t.tag) for t in session.exec(select(CustomerTag))}
    c2 = session.exec(select(Customer.id).where(Customer.external_id == "C2")).one()
    assert (c2, "price_sensitive") in tags
    transitions = _count(session, SegmentTransition)
    again = run_segmentation(session, ctx, AS_OF)
    assert again.changes["state_rows_written"] == 0
    assert again.changes["tier"] == {} and again.changes["tags_added"] == {} and again.changes["tags_removed"] == {}
    assert _count(session, SegmentTransition) == transitions


def _without_margin(session, ctx):
    _, tier = current_rule_set(session, "tier")
    put_rule_set(session, ctx, "tier", tier.model_copy(update={"margin": 0.0}).model_dump(by_alias=True), "test")


def test_a_tier_move_far_inside_the_new_tier_happens_at_once(session, ctx):
    _shop(session, ctx)
    run_segmentation(session, ctx, AS_OF)
    moved = run_segmentation(session, ctx, AS_OF + timedelta(days=30))  # C1: 35 days, deep inside potential
    assert _tiers(session)["C1"] == "potential" and moved.changes["tier"] == {"VIP->potential": 1}


def test_a_tier_move_needs_two_runs_and_is_recorded_as_a_transition(session, ctx):
    _shop(session, ctx)
    _without_margin(session, ctx)
    run_segmentation(session, ctx, AS_OF)
    # 30 days later C1's newest order is 35 days old: no longer VIP by recency.
    later = AS_OF + timedelta(days=30)
    first = run_segmentation(session, ctx, later)
    assert _tiers(session)["C1"] == "VIP" and first.changes["tier"] == {}
    c1 = session.exec(select(CustomerSegment).join(Customer, Customer.id == CustomerSegment.customer_id)
                      .where(Customer.external_id == "C1")).one()
    assert c1.tier_pending == "potential" and c1.tier_pending_runs == 1
    second = run_segmentation(session, ctx, later + timedelta(days=1))
    assert _tiers(session)["C1"] == "potential"
    assert second.changes["tier"]["VIP->potential"] == 1
    move = session.exec(select(SegmentTransition).where(SegmentTransition.dimension == "tier",
                                                        SegmentTransition.from_value == "VIP")).one()
    assert move.to_value == "potential" and move.at == later + timedelta(days=1)
    # Leaving VIP earns the lapsed_vip tag on the next run (the tag reads the tier history).
    run_segmentation(session, ctx, later + timedelta(days=2))
    assert session.exec(select(CustomerTag).where(CustomerTag.tag == "lapsed_vip",
                                                  CustomerTag.customer_id == c1.customer_id)).first() is not None


def test_orders_after_as_of_are_ignored(session, ctx):
    _shop(session, ctx)
    _orders(session, ctx, [(f"F{i}", "C4", -3 - i, 900, 0) for i in range(5)])  # after AS_OF
    run_segmentation(session, ctx, AS_OF)
    assert _tiers(session)["C4"] == "lost"


def test_profile_section_explains_the_tier(client, auth_header, session, ctx):
    _shop(session, ctx)
    run_segmentation(session, ctx, AS_OF)
    profile = client.get("/v1/customers/C1/profile", headers=auth_header(Role.support)).json()
    segment = profile["sections"]["segment"]
    assert segment["tier"] == "VIP" and segment["tier_matched_a_rule"] is True
    assert segment["recency_days"] == 5 and segment["frequency"] == 4 and segment["monetary"] == 2400
    assert {c["metric"]: c["threshold"] for c in segment["why"]["conditions"]} == {
        "recency_days": "≤ 30", "frequency": "≥ 4", "monetary": "≥ 2000"}
    assert segment["scores"]["rfm"] == "555"
    assert segment["history"][0]["tier"] == "VIP" and segment["history"][0]["left"] is None
    # Tags and history are read straight from the driver: the same values as the rows, timestamps aware UTC.
    state = session.exec(select(CustomerSegment).join(Customer, Customer.id == CustomerSegment.customer_id)
                         .where(Customer.external_id == "C1")).one()
    assert datetime.fromisoformat(segment["history"][0]["entered"]) == state.first_seen_at
    tagged = {}
    for external in ("C1", "C2", "C3", "C4", "C5"):
        shown = client.get(f"/v1/customers/{external}/profile", headers=auth_header(Role.support)).json()
        tagged |= {(external, t["tag"]): (datetime.fromisoformat(t["since"]), t["why"], t["rule_version"])
                   for t in shown["sections"]["segment"]["tags"]}
    stored = session.exec(select(Customer.external_id, CustomerTag).join(
        CustomerTag, CustomerTag.customer_id == Customer.id)).all()
    assert stored and tagged == {(external, t.tag): (t.since, t.why, t.version) for external, t in stored}
    never = client.get("/v1/customers/C5/profile", headers=auth_header(Role.support)).json()["sections"]["segment"]
    assert never["tier"] == "lost" and never["tier_matched_a_rule"] is False
    assert "fallback" in never["why"]["note"]


def test_the_profile_explains_from_the_customer_state_placed_among_the_runs_buyers(client, auth_header, session,
                                                                                    ctx):
    """A run stores its spend distribution (one row per distinct spend); a profile computes its customer's metrics
    from the customer state and places them with it: the same values the run assigned from, writes since included."""
    _shop(session, ctx)
    segment_run = run_segmentation(session, ctx, AS_OF)
    steps = session.exec(select(SegmentValueStep).order_by(SegmentValueStep.monetary)).all()
    assert steps and {s.run_id for s in steps} == {segment_run.id}
    assert segment_run.population["buyers"] == steps[-1].buyers_at_or_below
    assert [s.buyers_at_or_below for s in steps] == sorted(s.buyers_at_or_below for s in steps)
    _, tier = current_rule_set(session, "tier")
    from crm.service import customers_frame, events_frame, order_flags_frame, orders_frame
    from segmentation.metrics import MetricParams, compute_metrics

    orders = orders_frame(session, None, AS_OF).join(order_flags_frame(session), on="order_id", how="left")
    expected = compute_metrics(customers_frame(session), orders, events_frame(session, None, AS_OF), AS_OF,
                               MetricParams(window_days=tier.window_days)).rows_by_key("customer_id", named=True,
                                                                                      unique=True)
    brief = newest_run_brief(session)
    for customer_id, run_values in expected.items():
        values = customer_metrics(session, customer_id, brief, AS_OF, tier)
        for name in ("recency_days", "frequency", "monetary", "value_percentile", "days_since_last_login",
                     "low_activity_months", "orders_total"):
            assert values[name] == pytest.approx(run_values[name]), (customer_id, name)
    c1 = session.exec(select(Customer.id).where(Customer.external_id == "C1")).one()
    tier_before = session.get(CustomerSegment, c1).tier
    # A late-arriving order inside the window: visible in the profile as soon as it is written.
    _orders(session, ctx, [("LATE", "C1", 40, 100, 0)])
    segment = client.get("/v1/customers/C1/profile", headers=auth_header(Role.support)).json()["sections"]["segment"]
    assert (segment["frequency"], segment["monetary"]) == (5, 2500) and segment["tier"] == tier_before
    again = run_segmentation(session, ctx, AS_OF)  # a new run's steps replace the older run's
    assert {s.run_id for s in session.exec(select(SegmentValueStep))} == {again.id}


def test_customer_list_filters(client, auth_header, session, ctx):
    _shop(session, ctx)
    run_segmentation(session, ctx, AS_OF)
    headers = auth_header(Role.marketer)
    ids = lambda url: [c["external_id"] for c in client.get(url, headers=headers).json()["items"]]  # noqa: E731
    assert ids("/v1/customers?tier=lost") == ["C4", "C5"]
    assert ids("/v1/customers?tier=VIP&rfm=555") == ["C1"]
    assert ids("/v1/customers?tag=price_sensitive") == ["C2"]
    assert ids("/v1/customers?layer=nonexistent") == []
    unknown = client.get("/v1/customers?colour=blue", headers=headers)
    assert unknown.status_code == 422 and unknown.headers["content-type"] == "application/problem+json"
    assert unknown.json()["errors"][0]["field"] == "colour"
    spec = client.get("/v1/openapi.json").json()["paths"]["/v1/customers"]["get"]["parameters"]
    assert {"tier", "layer", "tag", "rfm"} <= {p["name"] for p in spec}


def test_rule_sets_are_validated_versioned_and_audited(client, auth_header, session, ctx):
    headers = auth_header(Role.marketer)
    current = client.get("/v1/segmentation/rule-sets/tier", headers=headers).json()
    assert current["version"] == 1 and current["body"]["rules"][0]["name"] == "VIP"
    body = current["body"]
    body["rules"][0]["when"]["monetary"] = {"min": 3000}
    saved = client.put("/v1/segmentation/rule-sets/tier", headers=headers, json=body)
    assert saved.status_code == 200 and saved.json()["version"] == 2
    assert client.get("/v1/segmentation/rule-sets/tier", headers=headers).json()["body"]["rules"][0]["when"][
        "monetary"] == {"min": 3000.0}
    audit = session.exec(select(AuditLog).where(AuditLog.action == "segmentation.rule_set.put")).one()
    assert audit.before["version"] == 1 and audit.after["version"] == 2
    unknown_metric = {"rules": [{"name": "x", "when": {"shoe_size": {"min": 40}}}]}
    unreachable = {"rules": [{"name": "a", "when": {"recency_days": {"max": 100}}},
                             {"name": "b", "when": {"recency_days": {"max": 30}, "frequency": {"min": 2}}}]}
    empty = {"rules": [{"name": "a", "when": {"frequency": {"min": 3, "max": 1}}}]}
    for bad, field in ((unknown_metric, "rules[0].when.shoe_size"), (unreachable, "rules[1].when"),
                       (empty, "rules.0.when.frequency")):
        response = client.put("/v1/segmentation/rule-sets/tier", headers=headers, json=bad)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == field
    tags = client.get("/v1/segmentation/rule-sets/tags", headers=headers).json()["body"]
    tags["tags"][0]["add"]["nonsense"] = {"min": 1}
    response = client.put("/v1/segmentation/rule-sets/tags", headers=headers, json=tags)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "tags[0].add.nonsense"
    assert client.get("/v1/segmentation/rule-sets/other", headers=headers).status_code == 404


def test_new_rules_apply_with_their_version(client, auth_header, session, ctx):
    _shop(session, ctx)
    headers = auth_header(Role.admin)
    body = client.get("/v1/segmentation/rule-sets/tier", headers=headers).json()["body"]
    body["confirm_runs"] = 1
    body["rules"][0]["when"]["monetary"] = {"min": 3000}
    client.put("/v1/segmentation/rule-sets/tier", headers=headers, json=body)
    assert client.post("/v1/segmentation/runs?as_of=2026-06-01", headers=headers).status_code == 200
    c1 = session.exec(select(CustomerSegment).join(Customer, Customer.id == CustomerSegment.customer_id)
                      .where(Customer.external_id == "C1")).one()
    assert c1.tier == "potential" and c1.tier_version == 2


def test_summary_and_history(client, auth_header, session, ctx):
    headers = auth_header(Role.marketer)
    assert client.get("/v1/segmentation/summary", headers=headers).status_code == 404
    _shop(session, ctx)
    for day in range(3):
        run_segmentation(session, ctx, AS_OF + timedelta(days=day))
    summary = client.get("/v1/segmentation/summary", headers=headers).json()
    assert summary["as_of"].startswith("2026-06-03") and summary["customers"] == 5
    assert summary["distribution"]["layer"].keys() == {"core", "churned", "churn_warning", "potential"}
    history = client.get("/v1/segmentation/history?from=2026-06-02&to=2026-06-04", headers=headers).json()["items"]
    assert [h["as_of"][:10] for h in history] == ["2026-06-02", "2026-06-03"]
    assert sum(history[0]["tier"].values()) == 5
    assert client.get("/v1/segmentation/history?from=2026-06-04&to=2026-06-01", headers=headers).status_code == 422


def test_the_profile_reads_the_same_metrics_as_the_batch_run(session, ctx):
    """Item-based metrics (marked-down lines, new products) agree between a run and one customer's profile."""
    from crm.service import customers_frame, events_frame, order_flags_frame, orders_frame
    from segmentation.metrics import MetricParams, compute_metrics, metrics_from_state
    from segmentation.service import _read_inputs, bring_state_to

    _shop(session, ctx)
    items = csv_text(("order_external_id", "line_no", "sku", "category", "qty", "unit_price", "list_price",
                      "is_new_product"),
                     [("A0", 1, "S1", "shoes", 1, "500", "600", "false"), ("A0", 2, "S2", "bags", 1, "100", "", "no"),
                      ("A1", 1, "S3", "shoes", 1, "600", "", "true"), ("A2", 1, "S4", "shoes", 1, "600", "600", "")])
    assert run(session, ctx, "order_items", items).rows_failed == 0
    c1 = session.exec(select(Customer.id).where(Customer.external_id == "C1")).one()
    _, tier = current_rule_set(session, "tier")
    params = MetricParams(window_days=tier.window_days)
    bring_state_to(session, ctx, AS_OF, params)
    inputs = _read_inputs(session, AS_OF, params, "VIP")
    batch = metrics_from_state(inputs["customers"], inputs["state"], AS_OF, params)
    # The nightly run's metrics from the customer state are exactly those computed from the raw history.
    orders = orders_frame(session, None, AS_OF).join(order_flags_frame(session), on="order_id", how="left")
    from_history = compute_metrics(customers_frame(session), orders, events_frame(session, None, AS_OF), AS_OF, params)
    assert batch.to_dicts() == from_history.to_dicts()
    row = batch.filter(customer_id=c1).row(0, named=True)
    assert row["discounted_share"] == 0.25 and row["new_product_orders"] == 1
    # A0 (5 days old) is the newest order and it was marked down: no full-price streak.
    assert row["full_price_streak"] == 0
    single = customer_metrics(session, c1, None, AS_OF, tier)  # before any run: the customer's buckets as of the day
    assert single["discounted_share"] == 0.25 and single["new_product_orders"] == 1
    assert single["full_price_streak"] == 0


def test_a_tag_whose_remove_rule_holds_is_deleted_and_recorded(session, ctx):
    _shop(session, ctx)
    run_segmentation(session, ctx, AS_OF)
    c2 = session.exec(select(Customer.id).where(Customer.external_id == "C2")).one()
    assert session.get(CustomerTag, (c2, "price_sensitive")) is not None
    _orders(session, ctx, [(f"P{i}", "C2", -1 - i, 300, 0) for i in range(3)])  # three full-price orders after
    later = run_segmentation(session, ctx, AS_OF + timedelta(days=5))
    session.expire_all()
    assert later.changes["tags_removed"].get("price_sensitive") == 1
    assert session.get(CustomerTag, (c2, "price_sensitive")) is None
    removal = session.exec(select(SegmentTransition).where(SegmentTransition.tag == "price_sensitive",
                                                           SegmentTransition.to_value.is_(None))).one()
    assert removal.customer_id == c2 and removal.from_value == "price_sensitive"
