"""One cap rule: the planner's check and the dispatcher's send-time check give the same verdicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.planning.caps import LEDGER_SCHEMA, Cap, check_at_send, check_caps

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
CHANNELS = ("sms", "email")
caps_strategy = st.lists(st.builds(Cap, st.integers(1, 3), st.integers(1, 30), st.sampled_from([*CHANNELS, None])),
                         min_size=1, max_size=3)
ledger_row = st.tuples(st.integers(1, 4), st.sampled_from(CHANNELS), st.floats(0, 40 * 24), st.integers(0, 100),
                       st.booleans())


def _ledger(rows: list[tuple], candidate_priority: int) -> pl.DataFrame:
    """Messages already out (firm) and planned ones of lower priority (provisional), all before now."""
    return pl.DataFrame(
        {"customer_id": [r[0] for r in rows], "channel": [r[1] for r in rows],
         "send_at": [NOW - timedelta(hours=r[2]) for r in rows],
         "priority": [min(r[3], candidate_priority - 1) if r[4] else r[3] for r in rows],
         "message_id": list(range(1000, 1000 + len(rows))), "preemptible": [r[4] for r in rows]},
        schema=LEDGER_SCHEMA)


@settings(max_examples=300, deadline=None)
@given(caps=caps_strategy, rows=st.lists(ledger_row, max_size=30), priority=st.integers(1, 100),
       channels=st.lists(st.sampled_from(CHANNELS), min_size=4, max_size=4))
def test_planner_and_dispatcher_agree_on_random_ledgers(caps, rows, priority, channels):
    ledger = _ledger(rows, priority)
    candidates = pl.DataFrame({"id": [1, 2, 3, 4], "customer_id": [1, 2, 3, 4], "channel": channels,
                               "priority": [priority] * 4, "send_at": [NOW] * 4},
                              schema_overrides={"send_at": pl.Datetime("us", "UTC")})
    planned = check_caps(candidates, ledger, caps, priority).sort("id")["capped"].to_list()
    # The dispatcher reads the trailing window only: the ledger since now minus the longest cap window.
    trailing = ledger.filter(pl.col("send_at") > NOW - timedelta(days=max(c.window_days for c in caps)))
    at_send = check_at_send(candidates, trailing, caps).sort("id")["capped"].to_list()
    assert planned == at_send


def _one_by_one(candidates: list[dict], ledger: list[tuple], caps: list[Cap]) -> dict[int, bool]:
    """The reference: candidates in priority order, each counted against firm messages and those admitted before."""
    firm = [(c, ch, at) for c, ch, at, provisional in ledger if not provisional]
    verdict = {}
    for row in sorted(candidates, key=lambda r: (-r["priority"], r["id"])):
        capped = any(sum(1 for c, ch, at in firm if c == row["customer_id"] and cap.channel in (None, ch)
                         and abs(at - NOW) < timedelta(days=cap.window_days)) >= cap.limit
                     for cap in caps if cap.channel in (None, row["channel"]))
        verdict[row["id"]] = capped
        if not capped:
            firm.append((row["customer_id"], row["channel"], NOW))
    return verdict


@settings(max_examples=300, deadline=None)
@given(caps=caps_strategy, rows=st.lists(ledger_row, max_size=20),
       batch=st.lists(st.tuples(st.integers(1, 3), st.sampled_from(CHANNELS), st.integers(0, 100)), min_size=1,
                      max_size=8))
def test_a_batch_with_several_messages_per_customer_admits_by_priority(caps, rows, batch):
    ledger = _ledger(rows, 101)
    candidates = [{"id": i, "customer_id": c, "channel": ch, "priority": p, "send_at": NOW}
                  for i, (c, ch, p) in enumerate(batch)]
    frame = pl.DataFrame(candidates, schema_overrides={"send_at": pl.Datetime("us", "UTC")})
    got = {r["id"]: r["capped"] for r in check_at_send(frame, ledger, caps).iter_rows(named=True)}
    expected = _one_by_one(candidates, [(r[0], r[1], NOW - timedelta(hours=r[2]), r[4]) for r in rows], caps)
    assert got == expected
