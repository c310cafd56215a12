"""Text rules, pure: SMS reply keywords, the opt-out text marketing SMS carry, advertising-law phrases, and what
makes a message marketing rather than a transactional notice.

Every comparison runs on a normalised form (NFKC, so full-width ＴＤ is TD; case-folded; whitespace collapsed), so
a list entry matches however the customer or the marketer typed it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

# Defaults; the guard-rail settings carry the lists a shop actually uses.
STOP_KEYWORDS = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "TD", "T", "N", "退订", "取消订阅",
                 "退订短信", "取消")
START_KEYWORDS = ("START", "UNSTOP", "YES", "订阅")
HELP_KEYWORDS = ("HELP", "INFO", "帮助")
OPT_OUT_TEXTS = ("回复TD退订", "回TD退订", "退订回T", "回复T退订", "回复N退订", "Reply STOP", "Text STOP",
                 "STOP to opt out", "STOP to unsubscribe")
# Absolute claims the advertising law forbids in ad copy (phrases, never the bare 最: 最近 and 最新到货 are fine).
FORBIDDEN_AD_PHRASES = ("最佳", "最好", "最低价", "最高级", "最便宜", "最优", "最先进", "最大程度", "第一品牌", "第一",
                        "全网第一", "销量第一", "国家级", "世界级", "顶级", "顶尖", "极品", "绝对", "唯一", "首选",
                        "万能", "best ever", "number one")
# Words that make a notice marketing: a transactional message (order, shipping, account) carries none of them.
MARKETING_PHRASES = ("优惠", "优惠券", "券码", "折扣", "打折", "促销", "特价", "限时", "满减", "立减", "包邮", "秒杀",
                     "抢购", "新品", "预售", "coupon", "discount", "% off", "sale", "promo", "offer", "deal",
                     "free shipping", "limited time")
KEYWORD_EDGES = re.compile(r"^[\W_]+|[\W_]+$")
_PARSER = SandboxedEnvironment()


def normalise_text(text: str) -> str:
    """NFKC (full-width letters and digits become ASCII), case-folded, runs of whitespace as one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def normalise_reply(body: str) -> str:
    """A reply as keywords are matched: normalised, surrounding punctuation, symbols and spaces removed."""
    return KEYWORD_EDGES.sub("", normalise_text(body)).strip()


def reply_keyword(body: str, stop: Iterable[str], start: Iterable[str], help_words: Iterable[str]) -> str | None:
    """'stop', 'start' or 'help' when the whole reply is one of the listed keywords, else None."""
    word = normalise_reply(body)
    if not word:
        return None
    for kind, words in (("stop", stop), ("start", start), ("help", help_words)):
        if word in {normalise_reply(w) for w in words}:
            return kind
    return None


def phrases_in(text: str, phrases: Iterable[str]) -> list[str]:
    """The listed phrases that occur in the text (normalised on both sides), in list order."""
    haystack = normalise_text(text)
    return [p for p in phrases if normalise_text(p) and normalise_text(p) in haystack]


def has_opt_out_text(body: str, texts: Iterable[str]) -> bool:
    """Whether an SMS body carries one of the accepted opt-out texts (回复TD退订 / Reply STOP …)."""
    squeezed = normalise_text(body).replace(" ", "")
    return any(normalise_text(t).replace(" ", "") in squeezed for t in texts if t.strip())


def uses_offer(source: str) -> bool:
    """Whether a template's source refers to the offer (a transactional notice must not)."""
    try:
        return "offer" in meta.find_undeclared_variables(_PARSER.parse(source))
    except Exception:  # noqa: BLE001 - a template that does not parse is refused elsewhere, with its error
        return False
