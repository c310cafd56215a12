"""The data generator: deterministic per seed, realistic in shape, importable with its deliberate faults."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
from polars.testing import assert_frame_equal

from crm.ingest import file_chunks, run_import
from wiring.generator import GeneratorConfig, generate, write_dataset

CONFIG = GeneratorConfig(customers=3000, seed=7, end=date(2026, 6, 1))


def test_same_seed_same_data_other_seed_other_data():
    first, again, other = generate(CONFIG), generate(CONFIG), generate(GeneratorConfig(customers=3000, seed=8,
                                                                                       end=date(2026, 6, 1)))
    for name in ("customers", "orders", "order_items", "events"):
        assert_frame_equal(getattr(first, name), getattr(again, name))
    assert not first.orders.equals(other.orders)


def test_realistic_shape():
    data = generate(CONFIG)
    orders, customers = data.orders, data.customers
    per_customer = orders.group_by("customer_external_id").agg(pl.col("amount_paid").sum().alias("spend"),
                                                               pl.len().alias("n"))
    spend = per_customer["spend"].sort(descending=True)
    top_fifth_share = spend.head(len(spend) // 5).sum() / spend.sum()
    assert top_fifth_share > 0.5, "spend is heavy-tailed"
    assert per_customer["n"].max() > 10 * per_customer["n"].median()
    assert (customers["time_zone"] == "Asia/Shanghai").mean() > 0.75
    assert customers["time_zone"].n_unique() >= 6
    assert 0.15 < (orders["discount"] > 0).mean() < 0.6
    end = datetime(2026, 6, 1, tzinfo=UTC)
    assert orders["ordered_at"].max() < end
    assert data.order_items["is_new_product"].any() and data.events["type"].n_unique() >= 6
    # Customers who stopped buying long ago exist (churn), as do recent buyers.
    last = orders.group_by("customer_external_id").agg(pl.col("ordered_at").max())["ordered_at"]
    days_since = (end - last).dt.total_days()
    assert (days_since > 180).mean() > 0.15 and (days_since <= 30).mean() > 0.1


def test_generated_files_import_with_their_bad_rows_reported(tmp_path, session, ctx):
    config = GeneratorConfig(customers=400, seed=3, end=date(2026, 6, 1), bad_rows=0.02)
    counts = write_dataset(config, tmp_path)
    jobs = {kind: run_import(session, ctx, kind=kind, chunks=file_chunks(tmp_path / f"{kind}.csv"), actor="test")
            for kind in ("customers", "orders", "order_items", "events")}
    for kind, job in jobs.items():
        assert job.rows_total == counts[kind]
        assert job.rows_inserted + job.rows_failed == counts[kind]
    assert jobs["customers"].rows_failed > 0 and jobs["orders"].rows_failed > 0
    reasons = {e["reason"] for e in jobs["orders"].errors}
    assert {"negative amount", "unknown customer", "not an ISO 8601 date or time"} <= reasons
