"""Pure pieces, no database: timestamp parsing, normalisers, masking, the contact cipher."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm.service import mask_email, mask_phone
from crm.validation import (
    normalise_email,
    normalise_phone,
    parse_push_tokens,
    parse_timestamp,
    timestamp_column,
)
from kit.crypto import ContactCipher


@pytest.mark.parametrize(("text", "expected"), [
    ("2025-01-02", datetime(2025, 1, 2, tzinfo=UTC)),
    ("2025-01-02T03:04:05Z", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2025-01-02 03:04:05", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2025-01-02T11:04:05+08:00", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2025-01-01T22:04:05-0500", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2025-01-02T03:04:05.250000z", datetime(2025, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)),
    ("2025-01-02T03:04", datetime(2025, 1, 2, 3, 4, tzinfo=UTC)),
    ("2025-02-30", None), ("2025-13-01", None), ("yesterday", None), ("", None), (None, None),
])
def test_parse_timestamp(text, expected):
    frame = pl.DataFrame({"t": [text]}, schema={"t": pl.String})
    assert frame.select(parse_timestamp("t")).item() == expected
    assert timestamp_column(frame, "t").item() == expected


_ISO_FORMS = st.sampled_from(["%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d",
                              "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S.%fz", "junk"])


@given(st.lists(st.tuples(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
                                       timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)),
                                                                  timezone(timedelta(hours=-5, minutes=-30))])),
                          _ISO_FORMS), min_size=1, max_size=20))
def test_timestamp_column_fast_path_agrees_with_the_general_parser(moments):
    texts = [form if form == "junk" else moment.strftime(form) for moment, form in moments]
    frame = pl.DataFrame({"t": texts}, schema={"t": pl.String})
    assert timestamp_column(frame, "t").to_list() == frame.select(parse_timestamp("t")).to_series().to_list()


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)))
def test_parse_timestamp_round_trips_iso_output(moment):
    text = moment.isoformat()
    assert pl.DataFrame({"t": [text]}).select(parse_timestamp("t")).item() == moment


def test_normalisers():
    assert normalise_email(" Jane.Doe@Example.COM ".strip()) == "jane.doe@example.com"
    assert normalise_email("jane@") is None and normalise_email("a b@example.com") is None
    assert normalise_phone("138 0013 5678", "CN") == "+8613800135678"
    assert normalise_phone("+1 (415) 555-2671", "CN") == "+14155552671"
    assert normalise_phone("12345", "CN") is None and normalise_phone("not a number", "CN") is None
    assert parse_push_tokens('["b", "a", "a"]') == '["a", "b"]'
    assert parse_push_tokens("x; y ;") == '["x", "y"]'
    assert parse_push_tokens('[1, 2]') is None and parse_push_tokens("[oops") is None


def test_masking():
    assert mask_email("jane@example.com") == "j***@example.com"
    assert mask_phone("+8613800135678") == "+86 1*******678"
    assert mask_phone("+14155552671") == "+1 4******671"
    assert mask_email(None) is None and mask_phone(None) is None


@pytest.mark.parametrize("number", ["+8613800135678", "+14155552671", "+85291234567", "+3531234567", "+6612345678",
                                    "+35312345", "+4912345", "+861380013"])
def test_a_masked_number_never_shows_more_than_four_digits(number):
    """8-digit numbers used to show 7 digits and 7-digit ones all of them: a few exact searches rebuilt them."""
    import phonenumbers

    masked = mask_phone(number)
    parsed = phonenumbers.parse(number, None)
    national = str(parsed.national_number)
    shown = sum(ch.isdigit() for ch in masked.split(" ", 1)[1])
    assert masked.startswith(f"+{parsed.country_code} ") and shown <= 4 and len(national) - shown >= 4


def test_cipher_round_trip_random_nonce_and_stable_blind_index():
    cipher = ContactCipher("k1")
    first, second = cipher.encrypt("a@example.com"), cipher.encrypt("a@example.com")
    assert first != second and b"example" not in first
    assert cipher.decrypt(first) == cipher.decrypt(second) == "a@example.com"
    assert cipher.blind_index("a@example.com") == cipher.blind_index("a@example.com")
    other = ContactCipher("k2")
    assert other.blind_index("a@example.com") != cipher.blind_index("a@example.com")
    with pytest.raises(Exception):  # noqa: B017 - a wrong key must not decrypt (InvalidTag)
        other.decrypt(first)
    assert cipher.hash_api_key("crm_x") != cipher.blind_index("crm_x")


def test_shared_frames_serve_narrower_windows_with_the_same_end_and_read_anything_else():
    from datetime import UTC, datetime, timedelta

    import polars as pl

    from kit.columnar import SharedFrames

    end = datetime(2026, 11, 1, tzinfo=UTC)
    days = [end - timedelta(days=d) for d in (1, 50, 100, 200)]
    reads: list[str] = []

    def reader(label: str, start):
        def read():
            reads.append(label)
            return pl.DataFrame({"at": [d for d in days if start is None or d >= start]})
        return read

    shared = SharedFrames()
    whole = shared.window("orders", None, end, "at", reader("all", None))
    recent = shared.window("orders", end - timedelta(days=60), end, "at", reader("60", end - timedelta(days=60)))
    assert len(whole) == 4 and recent["at"].to_list() == days[:2] and reads == ["all"]
    shared.window("orders", None, end + timedelta(days=1), "at", reader("other end", None))
    assert reads == ["all", "other end"]  # a different end is a different read
    shared.window("events", end - timedelta(days=30), end, "at", reader("30", end - timedelta(days=30)))
    shared.window("events", end - timedelta(days=90), end, "at", reader("90", end - timedelta(days=90)))
    assert reads[-2:] == ["30", "90"]  # a wider window than the cached one is read, not guessed
    assert shared.whole("customers", lambda: pl.DataFrame({"id": [1]})) is shared.whole("customers", lambda: None)
