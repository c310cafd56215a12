"""Deterministic, realistic shop data: customers, orders, order items and events (vectorised numpy).

Each customer buys as a Pareto/NBD-like process: an individual purchase rate (gamma-distributed) while
alive, and an individual lifetime (exponential with a gamma-distributed dropout rate). Spend is heavy
tailed through a per-customer price level over a fixed catalogue; seasonality and promotions thin and
discount orders; deal seekers use coupons; new-product adopters buy fresh launches; browsing and cart
events precede purchases and fade before a customer churns.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl

DAY_US = 86_400_000_000
ZONES = np.array(["Asia/Shanghai", "Asia/Hong_Kong", "Asia/Singapore", "America/Los_Angeles",
                  "America/New_York", "Europe/London", "Australia/Sydney", "Australia/Lord_Howe"])
ZONE_SHARE = np.array([0.85, 0.04, 0.03, 0.02, 0.02, 0.02, 0.015, 0.005])
ZONE_LOCALE = {"Asia/Shanghai": "zh-CN", "Asia/Hong_Kong": "zh-HK", "Asia/Singapore": "en-SG",
               "America/Los_Angeles": "en-US", "America/New_York": "en-US", "Europe/London": "en-GB",
               "Australia/Sydney": "en-AU", "Australia/Lord_Howe": "en-AU"}
# Prefixes whose every completion phonenumbers accepts as a valid mobile number (checked by sampling).
ZONE_PHONE = {"Asia/Shanghai": ("+86138", 8), "Asia/Hong_Kong": ("+85261", 6), "Asia/Singapore": ("+6581", 6),
              "America/Los_Angeles": ("+1415555", 4), "America/New_York": ("+1646555", 4),
              "Europe/London": ("+447400", 6), "Australia/Sydney": ("+61412", 6), "Australia/Lord_Howe": ("+61413", 6)}
CN_MOBILE_PREFIXES = np.array(["+86138", "+86139", "+86150", "+86151", "+86186", "+86188", "+86135", "+86159"])
EMAIL_DOMAINS = np.array(["qq.com", "163.com", "126.com", "gmail.com", "outlook.com", "example.com"])
CATEGORIES = np.array(["apparel", "shoes", "beauty", "skincare", "home", "kitchen", "electronics", "phone",
                       "toys", "baby", "books", "sports", "outdoor", "food", "snacks", "pets", "jewelry",
                       "bags", "health", "office"])
BACKGROUND_TYPES = ["login", "view", "search", "cart_abandon", "review", "share", "push_open"]
EVENT_TYPES = [*BACKGROUND_TYPES, "cart_add"]
BACKGROUND_SHARE = np.array([0.45, 0.30, 0.12, 0.06, 0.03, 0.02, 0.02])
SEASON_PEAK = 2.6   # highest value of _season (Double 11)
SEASON_MEAN = 1.07  # its mean over a year, so thinning keeps the configured yearly rate


@dataclass(frozen=True)
class GeneratorConfig:
    """Knobs of the synthetic shop; the defaults give ~10 orders and ~20 events per customer."""

    customers: int = 20_000
    seed: int = 42
    end: date = date(2026, 11, 1)
    history_days: int = 3 * 365
    bad_rows: float = 0.0
    products: int = 5_000
    deal_seeker_share: float = 0.25
    new_product_adopter_share: float = 0.15
    purchase_rate_shape: float = 1.1
    purchase_rate_mean_per_year: float = 9.4
    dropout_shape: float = 0.9
    mean_lifetime_days: float = 900.0
    # The "hard" variant's knobs (all off by default, so the default shop's draws never change):
    rate_drift_sd: float = 0.0  # each customer's purchase rate drifts by exp(N(0, sd) per year of tenure)
    season_strength: float = 1.0  # scales the seasonal peaks and dips
    pull_forward_share: float = 0.0  # share of orders in the 10 days after a promotion moved onto it
    dormant_share: float = 0.0  # customers who stop for 150–500 days and then come back
    # Heterogeneous response to messages (for uplift): see `true_uplift`.
    uplift_coupon_price_sensitive: float = 0.12
    uplift_call_vip: float = 0.08
    uplift_sleeping_dog_share: float = 0.2  # the most frequent buyers' share considered (full-price ones react)
    uplift_sleeping_dog: float = -0.06

    @classmethod
    def variant(cls, name: str, **overrides) -> GeneratorConfig:
        """A preset: "standard" (the default shop) or "hard" (transaction logs as real shops have them)."""
        presets = {"standard": {},
                   "hard": {"rate_drift_sd": 0.6, "season_strength": 1.8, "pull_forward_share": 0.35,
                            "dormant_share": 0.2, "purchase_rate_shape": 0.7, "dropout_shape": 0.6}}
        if name not in presets:
            raise ValueError(f"unknown generator variant {name!r} (standard, hard)")
        return cls(**(presets[name] | overrides))


@dataclass
class ShopData:
    """The generated tables, as polars frames with text-ready columns."""

    customers: pl.DataFrame
    orders: pl.DataFrame
    order_items: pl.DataFrame
    events: pl.DataFrame

    def write(self, out: Path, progress: Callable[[str], None] | None = None) -> dict[str, int]:
        """Write CSV files the importer reads; returns row counts per file (`progress` hears each file)."""
        out.mkdir(parents=True, exist_ok=True)
        counts = {}
        for name in ("customers", "orders", "order_items", "events"):
            frame: pl.DataFrame = getattr(self, name)
            frame.write_csv(out / f"{name}.csv", datetime_format="%Y-%m-%dT%H:%M:%SZ")
            counts[name] = len(frame)
            if progress is not None:
                progress(f"{name}.csv")
        return counts


def _season(times_us: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Relative shopping intensity by calendar day: Double 11, 618 and year-end peaks, a Spring Festival dip."""
    doy = (times_us / DAY_US) % 365.2425  # day of the year, near enough for a yearly cycle
    factor = np.ones_like(doy)
    factor += strength * 1.6 * np.exp(-0.5 * ((doy - 314) / 4.0) ** 2)   # 11 Nov
    factor += strength * 0.8 * np.exp(-0.5 * ((doy - 168) / 3.0) ** 2)   # 18 Jun
    factor += strength * 0.4 * np.exp(-0.5 * ((doy - 355) / 6.0) ** 2)   # December
    factor -= min(strength * 0.4, 0.8) * np.exp(-0.5 * ((doy - 35) / 6.0) ** 2)    # Spring Festival (approx.)
    return factor


def _promo_day(times_us: np.ndarray) -> np.ndarray:
    """True on promotion days (Double 11 week, 618, the 8th of each month's member day)."""
    doy = (times_us / DAY_US) % 365.2425
    dates = times_us.astype("datetime64[us]").astype("datetime64[D]")
    day_of_month = (dates - dates.astype("datetime64[M]")).astype(int) + 1
    return ((doy > 308) & (doy < 316)) | ((doy > 165) & (doy < 170)) | (day_of_month == 8)


def generate(config: GeneratorConfig) -> ShopData:
    """Build the whole shop deterministically from the config's seed."""
    rng = np.random.default_rng(config.seed)
    n = config.customers
    end_us = int(datetime(config.end.year, config.end.month, config.end.day, tzinfo=UTC).timestamp() * 1e6)
    start_us = end_us - config.history_days * DAY_US

    # --- customers: who they are and how they buy ---
    signup = start_us + (rng.power(1.3, n) * (end_us - start_us - DAY_US)).astype(np.int64)
    rate_scale = config.purchase_rate_mean_per_year / 365.0 / config.purchase_rate_shape
    purchase_rate = rng.gamma(config.purchase_rate_shape, rate_scale, n)
    dropout_rate = rng.gamma(config.dropout_shape, 1.0 / (config.mean_lifetime_days * config.dropout_shape), n)
    lifetime_days = rng.exponential(1.0 / np.maximum(dropout_rate, 1e-6))
    death = signup + (lifetime_days * DAY_US).astype(np.int64)
    alive_until = np.minimum(death, end_us)
    buys_at_signup = rng.random(n) < 0.88
    deal_seeker = rng.random(n) < config.deal_seeker_share
    adopter = rng.random(n) < config.new_product_adopter_share
    price_level = rng.beta(2.0, 5.0, n)  # where in the price-sorted catalogue a customer shops

    # --- catalogue: fixed list prices, launches across the history ---
    list_prices = np.sort(np.round(np.exp(rng.normal(4.2, 0.9, config.products)), 0) + 9)
    sku_category = rng.integers(0, len(CATEGORIES), config.products)
    launched_recently = rng.random(config.products) < 0.3
    launch = np.where(launched_recently, start_us + (rng.random(config.products) * (end_us - start_us)),
                      start_us - 365 * DAY_US).astype(np.int64)
    launch_order = np.argsort(launch)
    launch_sorted = launch[launch_order]

    # --- orders: a Poisson process while alive, thinned by seasonality ---
    active_days = np.maximum(alive_until - signup, 0) / DAY_US
    # Draw at the peak intensity, then keep each candidate with probability season / peak.
    hard = config.season_strength != 1.0 or config.rate_drift_sd != 0.0 or config.dormant_share != 0.0
    oversample = _hard_oversample(config) if hard else 1.0  # exactly 1.0 by default: the same draws as ever
    candidates = rng.poisson(purchase_rate * active_days * SEASON_PEAK / SEASON_MEAN * oversample)
    owner = np.repeat(np.arange(n), candidates)
    times = signup[owner] + (rng.random(len(owner)) * (alive_until[owner] - signup[owner])).astype(np.int64)
    if not hard:
        keep = rng.random(len(times)) < _season(times) / SEASON_PEAK
    else:
        keep = _hard_thinning(rng, config, owner, times, signup, n, oversample)
    owner, times = owner[keep], times[keep]
    if config.pull_forward_share > 0:
        times = _pull_forward(rng, times, config.pull_forward_share)
    first_owner = np.flatnonzero(buys_at_signup & (signup < end_us))
    owner = np.concatenate([first_owner, owner])
    times = np.concatenate([signup[first_owner] + rng.integers(0, 3_600_000_000, len(first_owner)), times])
    times = np.minimum(times, end_us - 1)
    order_sort = np.lexsort((owner, times))
    owner, times = owner[order_sort], times[order_sort]
    n_orders = len(owner)
    promo = _promo_day(times)
    discount_p = np.where(deal_seeker[owner], 0.8, 0.12) + np.where(promo, 0.35, 0.0)
    discounted = rng.random(n_orders) < np.minimum(discount_p, 0.95)
    coupon_based = discounted & (rng.random(n_orders) < 0.5)

    # --- items: 1–4 lines per order from the catalogue near the customer's price level ---
    lines = np.minimum(rng.geometric(0.62, n_orders), 4)
    item_order = np.repeat(np.arange(n_orders), lines)
    line_no = np.arange(len(item_order)) - np.repeat(np.cumsum(lines) - lines, lines) + 1
    item_time = times[item_order]
    level = np.clip(price_level[owner[item_order]] + rng.normal(0, 0.12, len(item_order)), 0, 0.999)
    sku = (level * config.products).astype(np.int64)
    wants_new = adopter[owner[item_order]] & (rng.random(len(item_order)) < 0.5)
    newest = np.searchsorted(launch_sorted, item_time) - 1 - rng.integers(0, 25, len(item_order))
    sku = np.where(wants_new & (newest >= 0), launch_order[np.clip(newest, 0, None)], sku)
    qty = np.minimum(rng.geometric(0.78, len(item_order)), 5)
    list_price = list_prices[sku]
    markdown = np.where(discounted[item_order] & ~coupon_based[item_order],
                        rng.choice([0.1, 0.2, 0.3], len(item_order)), 0.0)
    unit_price = np.round(list_price * (1 - markdown), 2)
    is_new = (item_time - launch[sku]) <= 60 * DAY_US

    gross = np.bincount(item_order, weights=qty * list_price, minlength=n_orders)
    markdown_total = np.bincount(item_order, weights=qty * (list_price - unit_price), minlength=n_orders)
    coupon_value = np.where(coupon_based, np.where(gross >= 300, 50.0, np.round(gross * 0.1, 2)), 0.0)
    discount = np.round(markdown_total + coupon_value, 2)
    amount_paid = np.round(gross - discount, 2)
    cost_known = rng.random(n_orders) < 0.9
    cost = np.where(cost_known, np.round(gross * rng.uniform(0.35, 0.6, n_orders), 2), np.nan)
    coupon_names = np.array(["SAVE50", "D11", "618", "MEMBER8", "WELCOME", "VIP10"])
    coupon = pl.Series(coupon_names[rng.integers(0, len(coupon_names), n_orders)])
    coupon = pl.select(pl.when(pl.Series(coupon_based)).then(coupon).otherwise(None)).to_series()

    # --- events: browsing before purchases, background activity that fades before churn ---
    views = rng.poisson(0.9, n_orders)
    pre_owner = np.repeat(owner, views)
    pre_time = np.repeat(times, views) - rng.integers(60_000_000, 3 * DAY_US, len(pre_owner))
    pre_sku = np.repeat(sku[np.searchsorted(item_order, np.arange(n_orders))], views)
    cart = rng.random(n_orders) < 0.5
    cart_owner, cart_time = owner[cart], times[cart] - rng.integers(60_000_000, DAY_US, int(cart.sum()))
    background_span_end = np.minimum(death + 20 * DAY_US, end_us)
    background_days = np.maximum(background_span_end - signup, 0) / DAY_US
    background = rng.poisson(background_days * (0.005 + purchase_rate * 0.7))
    bg_owner = np.repeat(np.arange(n), background)
    bg_time = signup[bg_owner] + (rng.random(len(bg_owner)) * (background_span_end[bg_owner] - signup[bg_owner])
                                  ).astype(np.int64)
    # Activity fades over the 60 days before a customer's death.
    fade = np.clip((death[bg_owner] - bg_time) / (60 * DAY_US), 0.1, 1.0)
    keep_bg = rng.random(len(bg_owner)) < fade
    bg_owner, bg_time = bg_owner[keep_bg], bg_time[keep_bg]
    bg_type = rng.choice(len(BACKGROUND_TYPES), len(bg_owner), p=BACKGROUND_SHARE)

    event_owner = np.concatenate([pre_owner, cart_owner, bg_owner])
    event_time = np.concatenate([pre_time, cart_time, bg_time])
    event_type = np.concatenate([np.full(len(pre_owner), EVENT_TYPES.index("view")),
                                 np.full(len(cart_owner), EVENT_TYPES.index("cart_add")), bg_type])
    event_sku = np.concatenate([pre_sku, sku[np.searchsorted(item_order, np.flatnonzero(cart))],
                                rng.integers(0, config.products, len(bg_owner))])
    in_range = (event_time >= start_us) & (event_time < end_us)
    event_owner, event_time, event_type, event_sku = (a[in_range] for a in (event_owner, event_time, event_type,
                                                                           event_sku))
    event_sort = np.argsort(event_time, kind="stable")
    event_owner, event_time, event_type, event_sku = (a[event_sort] for a in (event_owner, event_time, event_type,
                                                                             event_sku))

    customer_ids = _ids("C", n, 7)
    order_ids = _ids("O", n_orders, 9)
    # Repeated strings are gathered as Enum codes (integers), not copied string by string.
    customer_codes = customer_ids.cast(pl.Enum(customer_ids))
    order_codes = order_ids.cast(pl.Enum(order_ids))
    customers = _customer_frame(rng, n, signup, gross, owner, customer_ids)
    orders = pl.DataFrame({
        "external_id": order_ids,
        "customer_external_id": customer_codes.gather(owner),
        "ordered_at": _utc(times),
        "amount_paid": amount_paid, "discount": discount,
        "cost_of_goods": pl.Series(cost).fill_nan(None), "coupon_code": coupon,
    })
    items = pl.DataFrame({
        "order_external_id": order_codes.gather(item_order), "line_no": line_no.astype(np.int32),
        "sku": _enum(_ids("S", config.products, 5)).gather(sku),
        "category": _enum(pl.Series(CATEGORIES)).gather(sku_category[sku]), "qty": qty.astype(np.int32),
        "unit_price": unit_price, "list_price": list_price, "is_new_product": is_new,
    })
    shows_sku = np.isin(event_type, [EVENT_TYPES.index(t) for t in ("view", "cart_add", "cart_abandon", "review")])
    sku_json = pl.format('{{"sku":"{}"}}', _ids("S", config.products, 5)).alias("json")
    sku_properties = pl.concat([pl.select(sku_json).to_series(), pl.Series(["{}"])])
    events = pl.DataFrame({
        "external_id": _ids("E", len(event_owner), 10), "customer_external_id": customer_codes.gather(event_owner),
        "occurred_at": _utc(event_time), "type": _enum(pl.Series(EVENT_TYPES)).gather(event_type),
        "properties": _enum(sku_properties).gather(np.where(shows_sku, event_sku, config.products)),
    })
    data = ShopData(customers=customers, orders=orders, order_items=items, events=events)
    if config.bad_rows > 0:
        _inject_bad_rows(rng, data, config.bad_rows)
    return data


DRIFT_CAP = 2.0
PULL_FORWARD_DAYS = 10


def _hard_season_mean(config: GeneratorConfig) -> tuple[float, float]:
    """(peak, mean) of the hard variant's seasonal factor over a year."""
    year = _season(np.arange(0, 365 * DAY_US, DAY_US), config.season_strength)
    return float(year.max()), float(year.mean())


def _hard_oversample(config: GeneratorConfig) -> float:
    """How many more candidates the hard variant draws, so its strongest peak × drift cap stays a probability."""
    peak, mean = _hard_season_mean(config)
    return max(peak / mean * DRIFT_CAP / (SEASON_PEAK / SEASON_MEAN), 1.0)


def _hard_thinning(rng: np.random.Generator, config: GeneratorConfig, owner: np.ndarray, times: np.ndarray,
                   signup: np.ndarray, n: int, oversample: float) -> np.ndarray:
    """Which candidate orders happen under stronger seasons, drifting rates and dormant spells (the hard variant).

    Candidates were drawn at `oversample` × the default peak intensity; each is kept with the hard intensity (the
    season, scaled to mean 1, times the customer's drift, capped at `DRIFT_CAP`) over that."""
    _, mean = _hard_season_mean(config)
    drift = rng.normal(0.0, config.rate_drift_sd, n)
    years = (times - signup[owner]) / (365.0 * DAY_US)
    multiplier = np.clip(np.exp(drift[owner] * years), 0.05, DRIFT_CAP)
    intensity = _season(times, config.season_strength) / mean * multiplier
    chance = np.minimum(intensity / (SEASON_PEAK / SEASON_MEAN * oversample), 1.0)
    dormant = rng.random(n) < config.dormant_share
    sleep_start = signup + (rng.random(n) * 400 * DAY_US).astype(np.int64)
    sleep_end = sleep_start + rng.integers(150, 500, n) * DAY_US
    asleep = dormant[owner] & (times >= sleep_start[owner]) & (times < sleep_end[owner])
    return (rng.random(len(times)) < chance) & ~asleep


def _pull_forward(rng: np.random.Generator, times: np.ndarray, share: float) -> np.ndarray:
    """Move a share of the orders placed in the `PULL_FORWARD_DAYS` after a promotion day onto that day (stocking
    up on the deal instead of buying later)."""
    days = times // DAY_US
    day_range = np.arange(days.min() - 31, days.max() + 1)
    promo_days = day_range[_promo_day(day_range * DAY_US)]
    previous = np.searchsorted(promo_days, days, side="right") - 1
    last_promo = np.where(previous >= 0, promo_days[np.clip(previous, 0, None)], -10**9)
    within = (days - last_promo >= 1) & (days - last_promo <= PULL_FORWARD_DAYS)
    moved = within & (rng.random(len(times)) < share)
    offset = times % DAY_US
    return np.where(moved, last_promo * DAY_US + offset, times)


def true_uplift(config: GeneratorConfig, customers: pl.DataFrame, *, offer: bool, channel: str) -> np.ndarray:
    """Each customer's true change in purchase probability from one message (the generator's ground truth),
    from what they did before it (columns discount_share, spend, orders).

    Price-sensitive customers (many discounted orders) respond to coupons; VIPs (the top fifth by spend) to calls;
    frequent full-price buyers (the top fifth by orders, almost never discounted) are put off by any message
    ("sleeping dogs": they would have bought, a promotion makes them wait or leave)."""
    discount_share = customers["discount_share"].fill_null(0.0).to_numpy()
    spend = customers["spend"].fill_null(0.0).to_numpy()
    orders = customers["orders"].fill_null(0).to_numpy()
    vip = spend >= np.quantile(spend, 0.8) if len(spend) else spend.astype(bool)
    frequent = orders >= max(np.quantile(orders, 1 - config.uplift_sleeping_dog_share), 2) if len(orders) \
        else orders.astype(bool)
    sleeping_dog = frequent & (discount_share < 0.1)
    effect = np.full(len(customers), 0.01)
    if offer:
        effect = effect + config.uplift_coupon_price_sensitive * np.clip(discount_share * 2 - 0.4, 0, 1)
    if channel == "phone":
        effect = effect + np.where(vip, config.uplift_call_vip, 0.0)
    return np.where(sleeping_dog, config.uplift_sleeping_dog, effect)


def _ids(prefix: str, count: int, width: int) -> pl.Series:
    """Prefixed, zero-padded ids 1..count (C0000001, O000000001, …)."""
    return pl.select(pl.lit(prefix) + pl.int_range(1, count + 1, dtype=pl.Int64).cast(pl.String).str.zfill(width)
                     ).to_series()


def _enum(values: pl.Series) -> pl.Series:
    return values.cast(pl.Enum(values.unique(maintain_order=True)))


def _utc(micros: np.ndarray) -> pl.Series:
    return pl.Series(micros).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _customer_frame(rng: np.random.Generator, n: int, signup: np.ndarray, order_gross: np.ndarray,
                    owner: np.ndarray, customer_ids: pl.Series) -> pl.DataFrame:
    zone = rng.choice(ZONES, n, p=ZONE_SHARE)
    locale = np.vectorize(ZONE_LOCALE.get)(zone)
    numbers = rng.integers(0, 10**8, n)
    cn_prefix = rng.choice(CN_MOBILE_PREFIXES, n)
    phone = pl.Series(numbers).cast(pl.String).str.zfill(8)
    prefix = pl.Series(np.where(zone == "Asia/Shanghai", cn_prefix, np.vectorize(lambda z: ZONE_PHONE[z][0])(zone)))
    width = pl.Series(np.vectorize(lambda z: ZONE_PHONE[z][1])(zone))
    phone = (pl.DataFrame({"p": prefix, "n": phone, "w": width})
             .select(pl.col("p") + pl.col("n").str.slice(8 - pl.col("w"))).to_series())
    has_phone = rng.random(n) < 0.95
    has_email = rng.random(n) < 0.9
    email = pl.format("user{}@{}", pl.lit(pl.Series(np.arange(1, n + 1))), pl.lit(pl.Series(
        rng.choice(EMAIL_DOMAINS, n))))
    age_days = rng.integers(18 * 365, 65 * 365, n)
    birthday = (signup // DAY_US - age_days).astype("datetime64[D]")
    spend = np.bincount(owner, weights=order_gross, minlength=n)
    level = np.select([spend >= 20000, spend >= 5000, spend >= 1000], ["platinum", "gold", "silver"], "bronze")
    token_hex = pl.Series(rng.integers(0, 2**62, n)).cast(pl.String)

    def consent(p_in: float, p_out: float) -> np.ndarray:
        u = rng.random(n)
        status = pl.Series(np.where(u < p_in, "opted_in", "opted_out"))
        return pl.select(pl.when(pl.Series(u < p_in + p_out)).then(status).otherwise(None)).to_series()

    frame = pl.DataFrame({
        "external_id": customer_ids,
        "email": pl.select(email).to_series(), "phone": phone,
        "push_tokens": pl.Series([None] * n, dtype=pl.String), "time_zone": zone, "locale": locale,
        "birthday": pl.Series(birthday).cast(pl.Date).cast(pl.String),
        "signed_up_at": _utc(signup), "membership_level": level,
        "sms_consent": consent(0.7, 0.1), "email_consent": consent(0.6, 0.15),
        "push_consent": consent(0.5, 0.1), "phone_consent": consent(0.3, 0.05),
    })
    return frame.with_columns(
        pl.when(pl.Series(has_email)).then(pl.col("email")).otherwise(None).alias("email"),
        pl.when(pl.Series(has_phone)).then(pl.col("phone")).otherwise(None).alias("phone"),
        pl.when(pl.Series(rng.random(n) < 0.5)).then(pl.format('["fcm:{}"]', token_hex)).otherwise(None)
        .alias("push_tokens"),
        pl.when(pl.Series(rng.random(n) < 0.8)).then(pl.col("birthday")).otherwise(None).alias("birthday"),
    )


def _inject_bad_rows(rng: np.random.Generator, data: ShopData, share: float) -> None:
    """Corrupt a share of rows the way real exports go wrong (each row gets one known fault)."""

    def corrupt(frame: pl.DataFrame, faults: dict[str, str]) -> pl.DataFrame:
        rows = np.flatnonzero(rng.random(len(frame)) < share)
        choice = rng.integers(0, len(faults), len(rows))
        frame = frame.with_columns(pl.all().cast(pl.String))
        row_index = pl.int_range(pl.len())
        for index, (column, value) in enumerate(faults.items()):
            picked = pl.Series(rows[choice == index])
            # "<duplicate>" repeats the previous row's value, the way a re-exported line does.
            faulty = pl.col(column).shift(1) if value == "<duplicate>" else pl.lit(value)
            frame = frame.with_columns(pl.when(row_index.is_in(picked.implode())).then(faulty)
                                       .otherwise(pl.col(column)).alias(column))
        return frame

    data.customers = corrupt(data.customers, {"phone": "12345", "time_zone": "Mars/Olympus_Mons",
                                              "email": "not-an-email"})
    data.orders = corrupt(data.orders, {"amount_paid": "-10.00", "customer_external_id": "C_UNKNOWN",
                                        "ordered_at": "2024-13-45", "external_id": "<duplicate>"})
    data.events = corrupt(data.events, {"occurred_at": "yesterday-ish"})


DATASET_PHASES = 5  # generate, then the four files


def write_dataset(config: GeneratorConfig, out: Path, progress: Callable[[str], None] | None = None
                  ) -> dict[str, int]:
    """Generate and write the CSV files plus a manifest; returns the row counts (`progress` hears each phase)."""
    shop = generate(config)
    if progress is not None:
        progress("generated")
    counts = shop.write(out, progress)
    manifest = {"seed": config.seed, "customers": config.customers, "end": config.end.isoformat(),
                "bad_rows": config.bad_rows, "rows": counts, "generated_by": "crm generate"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return counts


def simulate_responses(members: pl.DataFrame, *, baseline: float, true_uplift: float | np.ndarray, window_days: int,
                       seed: int, basket_mean: float = 180.0) -> pl.DataFrame:
    """Orders of the days after a campaign, with a known effect: each member (customer_id, external_id, the
    earliest and latest real or would-be send times `send_at` / `last_send_at`, and `messaged`, how many campaigns
    sent them a message) buys once with probability baseline + true_uplift × messaged (clipped to [0, 1]).

    The order falls where every one of the member's campaign windows is open (after the last send, before the
    first window closes), so it counts for each campaign alike. Campaign arms are drawn independently, so each
    campaign's treated − holdout difference is the effect times the difference in messages received. Returns rows
    in the orders import format.
    """
    rng = np.random.default_rng(seed)
    n = members.height
    # A per-member effect (an array, e.g. from `true_uplift`) may be negative: messages that put customers off.
    chance = np.clip(baseline + np.asarray(true_uplift) * members["messaged"].to_numpy().astype(float), 0.0, 1.0)
    buys = rng.random(n) < chance
    first = members["send_at"].dt.epoch("us").to_numpy()
    last = members["last_send_at"].dt.epoch("us").to_numpy() if "last_send_at" in members.columns else first
    span = np.maximum(first + window_days * DAY_US - last, DAY_US // 24)  # sends days apart: an hour after the last
    at = last + (rng.random(n) * span).astype(np.int64)
    amount = np.round(rng.lognormal(np.log(basket_mean) - 0.18, 0.6, n), 2)
    buyers = members.with_columns(pl.Series("_at", at), pl.Series("_amount", amount)).filter(pl.Series(buys))
    return buyers.select(
        external_id=pl.lit("SIM-") + pl.col("send_at").dt.strftime("%Y%m%d") + "-" + pl.col("external_id"),
        customer_external_id="external_id",
        ordered_at=pl.from_epoch(pl.col("_at"), time_unit="us").dt.replace_time_zone("UTC"),
        amount_paid=pl.col("_amount"), discount=pl.lit(0.0), cost_of_goods=pl.lit(None, dtype=pl.Float64),
        coupon_code=pl.lit(None, dtype=pl.String))
