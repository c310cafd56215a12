"""The ingestion API (/v1): events, customers, orders, refunds; idempotency; the ingest role; per-item errors."""

from __future__ import annotations

from sqlmodel import select

from crm.models import Customer, CustomerState, Event, Order, OrderItem, Role

EVENT = {"customer_id": "C1", "type": "view", "time": "2026-10-30T10:00:00Z", "properties": {"sku": "A"},
         "unique_id": "ev-1"}


def _post(client, auth_header, path, body, key=None, role=Role.ingest):
    headers = auth_header(role) | ({"Idempotency-Key": key} if key else {})
    return client.post(path, json=body, headers=headers)


def _customer(client, auth_header, external_id="C1", **fields):
    response = _post(client, auth_header, "/v1/customers", {"external_id": external_id, **fields})
    assert response.status_code == 202, response.text
    return response.json()


def test_events_are_stored_once_per_unique_id_and_visible_in_the_state(client, auth_header, session):
    _customer(client, auth_header)
    first = _post(client, auth_header, "/v1/events", EVENT)
    again = _post(client, auth_header, "/v1/events", [EVENT, EVENT | {"unique_id": "ev-2", "type": "login"}])
    assert first.status_code == again.status_code == 202
    assert first.json()["accepted"] == 1 and again.json()["accepted"] == 2
    events = session.exec(select(Event).order_by(Event.external_id)).all()
    assert [(e.external_id, e.type) for e in events] == [("ev-1", "view"), ("ev-2", "login")]
    customer = session.exec(select(Customer).where(Customer.external_id == "C1")).one()
    state = session.get(CustomerState, customer.id)
    assert state is not None and state.lifetime_last_event_at is not None
    assert state.lifetime_last_event_at.isoformat().startswith("2026-10-30T10:00")


def test_a_bad_item_is_reported_by_index_and_field_and_the_good_ones_are_kept(client, auth_header, session):
    _customer(client, auth_header)
    response = _post(client, auth_header, "/v1/events", [
        EVENT, EVENT | {"unique_id": "ev-2", "time": "yesterday"}, EVENT | {"unique_id": "ev-3", "customer_id": "NO"},
        "not an object", EVENT | {"unique_id": "ev-4", "colour": "red"}])
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 1 and body["rejected"] == 4
    fields = {item["index"]: item["errors"][0]["field"] for item in body["items"] if item["status"] == "rejected"}
    assert fields == {1: "occurred_at", 2: "customer_external_id", 3: "[3]", 4: "colour"}
    assert [e.external_id for e in session.exec(select(Event)).all()] == ["ev-1"]


def test_ingest_keys_write_but_read_nothing(app, client, auth_header):
    _customer(client, auth_header)
    paths = app.openapi()["paths"]
    public = {"/v1/health/live", "/v1/health/ready", "/v1/metrics", "/v1/unsubscribe/{token}"}  # no key needed
    readable = [path for path, operations in paths.items() if "get" in operations and path not in public]
    assert len(readable) > 20
    for path in readable:
        url = path.replace("{", "").replace("}", "")  # every path parameter named by itself
        assert client.get(url, headers=auth_header(Role.ingest)).status_code in (401, 403), path
    assert _post(client, auth_header, "/v1/events", EVENT, role=Role.support).status_code == 403


def test_idempotency_key_replays_the_answer_and_refuses_another_body(client, auth_header, session):
    _customer(client, auth_header)
    first = _post(client, auth_header, "/v1/events", EVENT, key="k-1")
    replay = _post(client, auth_header, "/v1/events", EVENT, key="k-1")
    assert replay.status_code == 202 and replay.json() == first.json()
    assert replay.headers.get("Idempotency-Replayed") == "true"
    other = _post(client, auth_header, "/v1/events", EVENT | {"unique_id": "ev-9"}, key="k-1")
    assert other.status_code == 422
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert len(session.exec(select(Event)).all()) == 1


def test_orders_with_items_then_a_partial_refund_count_net(client, auth_header, session):
    _customer(client, auth_header, name="Ana Li", email="ana@example.com")
    order = {"external_id": "O1", "customer_id": "C1", "ordered_at": "2026-10-20T09:00:00Z", "amount_paid": 100,
             "items": [{"sku": "S1", "qty": 2, "unit_price": 50, "list_price": 60}]}
    response = _post(client, auth_header, "/v1/orders", order)
    assert response.status_code == 202 and response.json()["accepted"] == 1, response.text
    stored = session.exec(select(Order)).one()
    assert [i.sku for i in session.exec(select(OrderItem).where(OrderItem.order_id == stored.id))] == ["S1"]
    refund = {"refund_id": "R1", "amount": 30, "refunded_at": "2026-10-25T09:00:00Z", "items": [{"sku": "S1", "qty": 1}]}
    first = _post(client, auth_header, "/v1/orders/O1/refunds", refund)
    assert first.status_code == 202 and first.json()["status"] == "partially_refunded"
    assert _post(client, auth_header, "/v1/orders/O1/refunds", refund).json()["replayed"] is True
    too_much = _post(client, auth_header, "/v1/orders/O1/refunds", {"refund_id": "R2", "amount": 80})
    assert too_much.status_code == 422 and too_much.json()["errors"][0]["field"] == "amount"
    state = session.get(CustomerState, stored.customer_id)
    session.refresh(state)
    assert float(state.lifetime_spend) == 70.0 and state.lifetime_orders == 1
    profile = client.get("/v1/customers/C1/profile", headers=auth_header(Role.support)).json()
    assert profile["sections"]["orders"]["total_spend"] == 70.0 and profile["sections"]["orders"]["orders"] == 1
    cancelled = _post(client, auth_header, "/v1/orders", order | {"status": "cancelled"})
    assert cancelled.json()["updated"] == 1
    session.refresh(state)
    assert state.lifetime_orders == 0 and float(state.lifetime_spend) == 0.0
    assert client.get("/v1/customers/C1/profile", headers=auth_header(Role.support)).json()["sections"]["orders"]["orders"] == 0


def test_customer_names_are_encrypted_and_found_by_their_keyed_hash(client, auth_header, session, ctx):
    _customer(client, auth_header, name="Ana  LI", consent={"email": "opted_in"}, email="ana@example.com")
    customer = session.exec(select(Customer).where(Customer.external_id == "C1")).one()
    assert customer.name_ciphertext and b"Ana" not in customer.name_ciphertext
    assert customer.name_hash == ctx.cipher.blind_index("ana li")
    assert ctx.cipher.decrypt(customer.name_ciphertext) == "Ana  LI"
    shown = client.get("/v1/customers/C1", headers=auth_header(Role.support)).json()["contact"]
    assert shown["name"] == "A** L*" and "Ana" not in str(shown)
    assert client.get("/v1/customers/C1", headers=auth_header(Role.admin)).json()["contact"]["name"] == "Ana  LI"


def test_a_body_that_is_not_a_batch_is_a_problem_naming_the_body(client, auth_header):
    for body in (42, [], [EVENT] * 1001):
        response = _post(client, auth_header, "/v1/events", body)
        assert response.status_code == 422
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"][0]["field"] == "body"
