"""What the security review found, each with the test that failed before its fix: uploads that broke, resources a
marketer could exhaust, rows that failed whole files, ids that could not be reached, formula injection."""

from __future__ import annotations

import csv
import io
import json
import os
import stat

import pytest

from campaigns import service
from campaigns.authoring import rendering, templates
from crm import ingest
from crm.models import Role
from tests.support.factories import CUSTOMER_HEADER, csv_text, customers, run
from wiring.report_catalog import spreadsheet_safe

# ---------------------------------------------------------------- uploads on a running server


def test_customer_uploads_with_different_columns_follow_each_other_on_one_connection(client, auth_header):
    """The staging table lived on the pooled connection with the first file's columns: the second upload (a
    phone column more) failed with 'no column named phone_ciphertext' until a restart."""
    admin = auth_header(Role.admin) | {"Content-Type": "text/csv"}
    first = client.post("/v1/imports/customers", content="external_id,email\nU1,u1@example.com\n", headers=admin)
    second = client.post("/v1/imports/customers", content="external_id,email,phone\nU2,u2@example.com,13800000002\n",
                         headers=admin)
    third = client.post("/v1/imports/customers", content="external_id\nU3\n", headers=admin)
    assert [r.status_code for r in (first, second, third)] == [201, 201, 201]
    assert [r.json()["status"] for r in (first, second, third)] == ["completed"] * 3
    assert [r.json()["rows_inserted"] for r in (first, second, third)] == [1, 1, 1]


# ---------------------------------------------------------------- the render budget


@pytest.mark.parametrize("body", [
    "{{ '%999999999s' % 'x' }}",  # once 10.4 s and 4.4 GB
    "{{ 'a' * 10**7 }}",  # a 10 MB SMS
    "{{ 'x' * 3000 }}",  # longer than an SMS body may be
    "{{ 10 ** 100000 }}",
    "{{ '{:999999999}'.format('x') }}",
    "{{ '{:{w}}'.format('x', w=999999999) }}",
    "{{ 'x' | center(999999999) }}",
    "{% set a = 'x' * 1000 %}{{ a | replace('x', a) | replace('x', a) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set a = 'xxxxxxxxxx' %}" + "{% set a = a ~ a %}" * 25 + "{{ a | length }}",
    # 2^30 macro calls, no loop and no output until the end: once 20 s for 2^22 before the first check
    "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(30) }}",
])
def test_templates_that_would_exhaust_the_service_are_refused_at_save(client, auth_header, body):
    answer = client.post("/v1/templates", json={"name": "heavy", "channel": "sms", "locale": "en-US",
                                             "parts": {"body": body + " Reply STOP to opt out"}},
                         headers=auth_header(Role.marketer))
    assert answer.status_code == 422, body
    assert "RenderBudgetExceeded" in answer.json()["errors"][0]["reason"]


def test_a_costly_branch_the_sample_never_takes_fails_its_message_not_the_dispatcher(session, ctx):
    """Checked against the sample customer only, `{% if customer.external_id != 'C-SAMPLE' %}` hid nested loops
    that cost seconds per message in dispatch: the budget applies to every render, so the message fails alone."""
    hidden = ("{% if customer.external_id != 'C-SAMPLE' %}{% for i in range(100000) %}{% for j in range(100000) %}"
              "{% endfor %}{% endfor %}{% endif %}Hello. Reply STOP to opt out")
    source = rendering.TemplateSource("hidden", "sms", "en-US", {"body": hidden}, "test")
    sample = templates.shop_sample_context(ctx, "en-US")
    assert rendering.validate(source, sample)["rendered"]["body"].startswith("Hello")  # passes at save
    real = sample | {"customer": sample["customer"] | {"external_id": "C42"}}
    with pytest.raises(rendering.TemplateProblem, match="loops ran more than"):
        rendering.render(source, real)


def test_a_template_part_or_a_rule_set_too_big_is_refused(client, auth_header):
    marketer = auth_header(Role.marketer)
    huge = client.post("/v1/templates", json={"name": "big", "channel": "sms", "locale": "en-US",
                                           "parts": {"body": "x" * (rendering.MAX_SOURCE_CHARS + 1)}}, headers=marketer)
    assert huge.status_code == 422 and huge.json()["errors"][0]["field"] == "parts.body"
    rules = [{"name": f"t{i}", "when": {"recency_days": {"max": i}}} for i in range(20_000)]
    answer = client.put("/v1/segmentation/rule-sets/tier", json={"rules": rules, "fallback": "t0"}, headers=marketer)
    assert answer.status_code == 422  # at most 100 rules; 20,000 took ~6 minutes to validate and stalled runs


def test_non_finite_numbers_are_refused_in_every_numeric_setting(client, auth_header):
    marketer = auth_header(Role.marketer) | {"Content-Type": "application/json"}
    body = b'{"rules": [{"name": "VIP", "when": {"recency_days": {"max": NaN}}}], "fallback": "VIP"}'
    answer = client.put("/v1/segmentation/rule-sets/tier", content=body, headers=marketer)
    assert answer.status_code == 422  # SQLite stored it (as null: the VIP recency bound silently gone)
    infinite = body.replace(b"NaN", b"Infinity")
    assert client.put("/v1/segmentation/rule-sets/tier", content=infinite, headers=marketer).status_code == 422
    campaign = {"name": "n", "channels": [{"channel": "sms", "template": "birthday_greeting"}],
                "schedule": {"kind": "daily"}, "holdout_share": float("nan")}
    assert client.post("/v1/campaigns", content=json.dumps(campaign).encode(), headers=marketer).status_code == 422


# ---------------------------------------------------------------- import memory, CPU and bad rows


def _upload(client, auth_header, kind: str, body: bytes, content_type: str = "text/csv"):
    return client.post(f"/v1/imports/{kind}", content=body, headers=auth_header(Role.admin) | {
        "Content-Type": content_type})


def test_an_upload_without_line_ends_is_refused_by_the_record_limit(client, auth_header, ctx):
    """500 MB from /dev/zero took 5.7 GB: the scanner now gives up once one record passes its limit."""
    answer = _upload(client, auth_header, "customers", b"\0" * (ctx.settings.import_max_record_bytes + 10))
    assert answer.status_code == 413 and "CRM_IMPORT_MAX_RECORD_BYTES" in answer.json()["detail"]
    quote = b'external_id,email\n"C1,a@example.com\n' + b"C2,b@example.com\n" * 100_000
    unterminated = _upload(client, auth_header, "customers", quote)
    assert unterminated.status_code == 413 and "unterminated quote" in unterminated.json()["detail"]


def test_header_width_and_body_size_are_limited(client, auth_header, ctx):
    wide = ",".join(["external_id", *(f"c{i}" for i in range(ctx.settings.import_max_columns))]) + "\nC1\n"
    answer = _upload(client, auth_header, "customers", wide.encode())
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "header"
    ctx.settings = ctx.settings.model_copy(update={"import_max_bytes": 2048})
    big = _upload(client, auth_header, "customers", b"external_id\n" + b"C1\n" * 2000)
    assert big.status_code == 413 and "CRM_IMPORT_MAX_BYTES" in big.json()["detail"]


def test_the_scanner_cuts_blocks_only_between_records_whatever_the_chunks():
    """The one-pass scanner (quote state carried between chunks) still never cuts inside a quoted field."""
    data = b"a,b\n" + b"".join(b'%d,"x\ny"\n' % i for i in range(20_000))
    blocks = list(ingest.split_records([data[i:i + 1000] for i in range(0, len(data), 1000)], quoted=True,
                                       block_bytes=4096, max_record_bytes=1 << 20))
    assert b"".join(blocks) == data and all(b.count(b'"') % 2 == 0 for b in blocks)


def test_bad_rows_are_reported_one_by_one_and_the_good_ones_kept(session, ctx):
    cr_only = run(session, ctx, "customers", b"external_id,email\rK1,k1@example.com\rK2,k2@example.com\r")
    assert (cr_only.status, cr_only.rows_inserted, cr_only.rows_failed) == ("completed", 2, 0)
    rows = [("G1", "g1@example.com"), ("N\x00UL", "n@example.com"), ("A/B-42", "ab@example.com"),
            ("G2", "g2@example.com")]
    job = run(session, ctx, "customers", csv_text(("external_id", "email"), rows))
    assert job.rows_inserted == 2 and {(e["row"], e["field"]) for e in job.errors} == {(2, "external_id"),
                                                                                       (3, "external_id")}
    long_level = run(session, ctx, "customers", csv_text(("external_id", "membership_level"),
                                                          [("L1", "x" * 33), ("L2", "gold")]))
    assert long_level.status == "completed" and long_level.rows_inserted == 1
    assert long_level.errors == [{"row": 1, "field": "membership_level", "reason": "longer than 32 characters"}]


def test_undecodable_bytes_and_giant_fields_fail_their_rows_only(session, ctx):
    """Latin-1 bytes became U+FFFD silently (distinct ids could collide); a field over the csv module's limit on
    the slow path failed the file."""
    body = (b"external_id,email\nOK1,ok1@example.com\n" + b"caf\xe9,latin@example.com\n"
            + b'"' + b"y" * 200_000 + b'",big@example.com\n' + b"OK2,ok2@example.com\n")
    job = ingest.run_import(session, ctx, kind="customers", chunks=[body], source="test", actor="test")
    assert job.status == "completed" and job.rows_inserted == 2
    assert {e["row"] for e in job.errors} == {2, 3}


def test_ndjson_nested_deep_or_with_nul_fails_its_line_only(session, ctx):
    deep = json.dumps({"external_id": "D1"})[:-1] + ', "attributes": ' + "[" * 60_000 + "]" * 60_000 + "}"
    lines = [json.dumps({"external_id": "J1"}), deep, json.dumps({"external_id": "J2", "attributes": {"k": "\u0000"}}),
             json.dumps({"external_id": "J3"})]
    job = run(session, ctx, "customers", ("\n".join(lines) + "\n").encode(), fmt="ndjson")
    assert job.status == "completed" and job.rows_inserted == 2 and {e["row"] for e in job.errors} == {2, 3}


def test_a_database_failure_never_copies_row_values_into_the_job_message():
    from sqlalchemy.exc import DataError

    class Original(Exception):
        sqlstate = "22021"

    failure = DataError("COPY orders", {}, Original("invalid byte sequence: 'secret-attribute-value'"))
    message = ingest.failure_message(failure)
    assert "secret-attribute-value" not in message and "22021" in message
    assert ingest.failure_message(ConnectionResetError("client went away")).endswith("client went away")


# ---------------------------------------------------------------- ids, reports, files


def test_every_imported_customer_can_be_addressed(client, session, ctx, auth_header):
    customers(session, ctx, 1)
    job = run(session, ctx, "customers", csv_text(CUSTOMER_HEADER[:1], [("A/B-42",)]))
    assert job.rows_failed == 1 and "URL path" in job.errors[0]["reason"]
    assert client.get("/v1/customers/C1/export", headers=auth_header(Role.admin)).status_code == 200


def test_csv_reports_neutralise_cells_a_spreadsheet_would_run(client, session, ctx, auth_header):
    evil = '=HYPERLINK("https://evil.example","open")'
    assert spreadsheet_safe(evil) == "'" + evil and spreadsheet_safe(-5) == -5 and spreadsheet_safe("50") == "50"
    for cell in ("+cmd", "-1+1", "@SUM(A1)", "\tx", "\rx"):
        assert spreadsheet_safe(cell).startswith("'")
    campaign = service.create_campaign(session, ctx, {"name": evil, "channels": [
        {"channel": "sms", "template": "birthday_greeting"}], "schedule": {"kind": "daily"}}, "test")
    service.set_status(session, ctx, campaign.id, "active", "test")
    customers(session, ctx, 1)
    from datetime import timedelta

    from campaigns.models import Message
    from crm.service import customer_by_external_id

    at = ctx.clock.now() - timedelta(days=1)
    session.add(Message(campaign_id=campaign.id, occurrence="o", customer_id=customer_by_external_id(session, "C1").id,
                        channel="sms", status="sent", priority=50, transactional=False, send_at=at, sent_at=at,
                        template="birthday_greeting", locale="zh-CN", created_at=at, updated_at=at))
    session.flush()
    exported = client.get("/v1/reports/campaigns?format=csv", headers=auth_header(Role.marketer))
    assert exported.status_code == 200
    names = [row["campaign"] for row in csv.DictReader(io.StringIO(exported.text))]
    assert names == ["'" + evil]


def test_the_embedded_database_file_is_private(tmp_path):
    from kit.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'private.sqlite3'}")
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x int)")
    engine.dispose()
    for name in ("private.sqlite3",):
        mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
        assert mode == 0o600, oct(mode)
