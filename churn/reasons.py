"""Readable reasons from LightGBM feature contributions, in zh-CN or en-US ("已 97 天未下单，平时约每 30 天一单" /
"no order for 97 days; usually orders every 30 days")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from churn.features import FeatureConfig

EVENT_LOOKBACK = max(FeatureConfig().event_windows)


LOCALES = ("zh-CN", "en-US")
TAG_NAMES = {  # the default tags in words; a shop's own tags read by their name
    "price_sensitive": ("价格敏感", "price-sensitive"), "new_product_adopter": ("新品尝鲜", "new-product adopter"),
    "cart_abandoner": ("加购未付款", "cart abandoner"), "browse_no_buy": ("只逛不买", "browses without buying"),
    "birthday_this_month": ("本月生日", "birthday this month"), "lapsed_vip": ("流失的 VIP", "lapsed VIP"),
    "first_order_only": ("只下过首单", "first order only"),
}
EVENT_NAMES = {"login": ("登录", "logins"), "view": ("浏览", "product views"), "cart_add": ("加购", "cart adds"),
               "cart_abandon": ("放弃购物车", "abandoned carts")}


def reader_locale(locale: str | None) -> str:
    """zh-CN for any Chinese locale (and by default, as the shop's market), en-US for any other."""
    return "en-US" if locale and not locale.lower().startswith("zh") else "zh-CN"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: Any, digits: int = 0) -> str | None:
    return None if _missing(value) else f"{value:,.{digits}f}"


def _pct(value: Any) -> str | None:
    return None if _missing(value) else f"{100 * value:.0f}%"


def sentence(feature: str, row: Any, locale: str = "zh-CN") -> str:
    """One plain sentence, in the reader's language, for a feature that pushed the risk up (no raw names)."""
    zh = reader_locale(locale) == "zh-CN"
    value = row.get(feature)
    say = (lambda cn, en: cn if zh else en)  # noqa: E731 - two short phrasings side by side read best
    if feature in ("recency_days", "recency_over_gap"):
        days, usual = _num(row.get("recency_days")), _num(row.get("gap_mean"))
        if days is None:
            return say("很久没有下单", "no order for a long time")
        if usual:
            return say(f"已 {days} 天未下单，平时约每 {usual} 天一单", f"no order for {days} days; usually orders every "
                       f"{usual} days")
        return say(f"已 {days} 天未下单", f"no order for {days} days")
    if feature == "trend_90d":
        change = value or 0
        return say(f"近 90 天订单比之前 90 天{'少' if change < 0 else '多'} {abs(change):.0f} 单",
                   f"{abs(change):.0f} {'fewer' if change < 0 else 'more'} orders in the last 90 days than in the "
                   "90 before")
    if feature.startswith("orders_") and feature[7:-1].isdigit():
        return say(f"近 {feature[7:-1]} 天只有 {_num(value) or 0} 单", f"only {_num(value) or 0} orders in the last "
                   f"{feature[7:-1]} days")
    if feature.startswith("spend_") and feature[6:-1].isdigit():
        return say(f"近 {feature[6:-1]} 天消费 {_num(value, 2) or 0}", f"spent {_num(value, 2) or 0} in the last "
                   f"{feature[6:-1]} days")
    if feature == "bgnbd_p_alive":
        return say(f"购买规律显示仍活跃的可能性只有 {_pct(value) or '低'}",
                   f"the buying pattern gives only a {_pct(value) or 'low'} chance of still being a customer")
    if feature == "bgnbd_expected":
        return say(f"预计接下来只会下 {_num(value, 1) or 0} 单", f"expected to place only {_num(value, 1) or 0} orders "
                   "in the coming months")
    if feature == "days_since_event":
        if value is None or value >= EVENT_LOOKBACK:  # the feature is capped at the longest event window
            return say(f"近 {EVENT_LOOKBACK} 天没有访问或 App 活动", f"no visit or app activity in the last "
                       f"{EVENT_LOOKBACK} days")
        return say(f"已 {_num(value)} 天没有访问或 App 活动", f"no visit or app activity for {_num(value)} days")
    if feature == "discount_share":
        return say(f"{_pct(value) or '多数'}的订单用了折扣", f"{_pct(value) or 'most'} of orders were discounted")
    if feature in ("orders_total", "purchase_days", "bgnbd_x"):
        return say(f"至今只买过 {_num(value) or 0} 次", f"only {_num(value) or 0} purchases so far")
    if feature == "purchase_days_per_month":
        return say(f"平均每月只购买 {_num(value, 2) or 0} 天", f"buys on only {_num(value, 2) or 0} days a month")
    if feature == "category_breadth":
        return say(f"只买过 {_num(value) or 0} 个品类", f"has bought from only {_num(value) or 0} product categories")
    if feature.startswith("tag_"):
        name = feature[4:]
        cn, en = TAG_NAMES.get(name, (name.replace("_", " "), name.replace("_", " ")))
        return say(f"{'带有' if value else '没有'}「{cn}」标签", f"{'tagged' if value else 'not tagged'} {en}")
    if feature == "tier_rank":
        return say("会员分层较低", "in a lower tier")
    if feature == "layer_rank":
        return say("用户分层较低", "in a lower customer layer")
    if feature in ("tenure_days", "bgnbd_T"):
        return say("成为顾客的时间不长", "a customer for only a short time") if (value or 0) < 180 else \
            say(f"首单在 {_num(value if feature == 'tenure_days' else (value or 0) * 7)} 天前",
                f"first order {_num(value if feature == 'tenure_days' else (value or 0) * 7)} days ago")
    if feature in ("order_value_mean", "last_order_value", "last_value_ratio", "spend_total", "zero_amount_share"):
        return say("订单金额在下降或偏低", "order values are low or falling")
    if feature in ("gap_mean", "gap_std", "gap_cv", "last_gap", "bgnbd_t_x"):
        return say("购买间隔不规律、越来越长", "time between purchases is irregular or growing")
    if feature in ("new_product_orders", "full_price_streak"):
        return say("很少买新品或原价商品", "rarely buys new or full-price products")
    kind, _, window = feature.rpartition("_")
    if kind in EVENT_NAMES and window[:-1].isdigit():
        cn, en = EVENT_NAMES[kind]
        return say(f"近 {window[:-1]} 天{cn}只有 {_num(value) or 0} 次", f"only {_num(value) or 0} {en} in the last "
                   f"{window[:-1]} days")
    return say("近期购买和访问信号偏弱", "weak recent buying and visit signals")


CONTEXT = ("gap_mean", "recency_days")


def drivers_frame(contributions: np.ndarray, names: list[str], features: np.ndarray, count: int = 3) -> pl.Series:
    """Per row, as JSON, the `count` features that raised the risk most (positive contributions only).

    Stored as data ({"drivers": [{"feature", "value", "contribution"}], "gap_mean", "recency_days"}) and turned
    into sentences
    when read (`sentences`): building 300k×3 sentences in Python at scoring time cost more than the scoring.
    features: the rows' feature values, columns in the order of `names`.
    """
    values = contributions[:, : len(names)]
    top = np.argsort(-values, axis=1)[:, :count]
    picked_values = np.take_along_axis(features, top, axis=1)
    picked_contributions = np.take_along_axis(values, top, axis=1)
    labels = np.asarray(names, dtype=object)
    # Sentences about one feature may quote another (recency against the usual gap): keep those beside.
    context = {name: features[:, names.index(name)] if name in names else np.full(len(features), np.nan)
               for name in CONTEXT}
    frame = pl.DataFrame({
        **{f"f{k}": pl.Series(labels[top[:, k]].tolist(), dtype=pl.String) for k in range(top.shape[1])},
        **{f"v{k}": picked_values[:, k] for k in range(top.shape[1])},
        **{f"c{k}": picked_contributions[:, k] for k in range(top.shape[1])},
        **context,
    }).fill_nan(None)
    drivers = [pl.when(pl.col(f"c{k}") > 0).then(pl.struct(
        pl.col(f"f{k}").alias("feature"), pl.col(f"v{k}").round(4).alias("value"),
        pl.col(f"c{k}").round(4).alias("contribution"))) for k in range(top.shape[1])]
    return frame.select(pl.struct(pl.concat_list(drivers).list.drop_nulls().alias("drivers"),
                                  *[pl.col(name).round(2) for name in CONTEXT])
                        .struct.json_encode().alias("reasons")).to_series()


def sentences(stored: dict[str, Any] | None, locale: str = "zh-CN") -> list[str]:
    """The stored drivers of a score as sentences in the locale, strongest first (the same sentence only once)."""
    if not stored:
        return []
    said: list[str] = []
    for driver in stored.get("drivers", []):
        row = {name: stored.get(name) for name in CONTEXT} | {driver["feature"]: driver["value"]}
        text = sentence(driver["feature"], row, locale)
        if text not in said:  # recency and recency-over-gap read the same: say it once
            said.append(text)
    return said


TOPICS = {  # what a driver is about, for the at-risk list's summary
    "recency": ("距上次下单太久", "long since the last order"),
    "frequency": ("购买次数少", "few purchases"),
    "trend": ("购买在减少", "buying less than before"),
    "value": ("消费金额低或在下降", "low or falling spend"),
    "activity": ("访问和 App 活动少", "little visit or app activity"),
    "pattern": ("购买规律显示可能已流失", "buying pattern suggests they have left"),
    "discount": ("依赖折扣", "relies on discounts"),
    "segment": ("分层或标签", "tier, layer or tags"),
    "tenure": ("新顾客", "new customer"),
}


def topic(feature: str) -> str:
    """The family a feature belongs to (the at-risk list counts flagged customers per family)."""
    if feature in ("recency_days", "recency_over_gap", "gap_mean", "gap_std", "gap_cv", "last_gap", "bgnbd_t_x"):
        return "recency"
    if feature.startswith(("orders_", "purchase_days")) or feature in ("bgnbd_x", "category_breadth"):
        return "frequency"
    if feature == "trend_90d":
        return "trend"
    if feature.startswith("spend_") or feature in ("order_value_mean", "last_order_value", "last_value_ratio",
                                                    "zero_amount_share", "new_product_orders", "full_price_streak"):
        return "value"
    if feature == "days_since_event" or feature.rpartition("_")[0] in EVENT_NAMES:
        return "activity"
    if feature.startswith("bgnbd_p") or feature == "bgnbd_expected":
        return "pattern"
    if feature == "discount_share":
        return "discount"
    if feature.startswith("tag_") or feature in ("tier_rank", "layer_rank"):
        return "segment"
    return "tenure" if feature in ("tenure_days", "bgnbd_T") else "pattern"


def topic_label(name: str, locale: str) -> str:
    """A topic in the reader's language."""
    cn, en = TOPICS[name]
    return cn if reader_locale(locale) == "zh-CN" else en
