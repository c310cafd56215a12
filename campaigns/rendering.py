"""Message templates: files in templates/ and templates stored through the API, rendered in a Jinja2 sandbox.

Marketers write templates, so rendering uses `SandboxedEnvironment` (no reaching Python internals) with
`StrictUndefined` (a misspelt variable is an error, not an empty string). HTML parts are autoescaped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from campaigns.sms import sms_length
from crm.settings import PROJECT_ROOT

TEMPLATE_ROOT = PROJECT_ROOT / "templates"
PARTS = {"sms": ("body",), "push": ("title", "body"), "email": ("subject", "text", "html"), "phone": ("body",)}
REQUIRED_PARTS = {"sms": ("body",), "push": ("body",), "email": ("subject", "text", "html"), "phone": ("body",)}
_TEXT = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
_HTML = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


class TemplateProblem(ValueError):
    """A template that cannot be used; `part` names the offending part."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"{part}: {reason}")
        self.part = part
        self.reason = reason


@dataclass(frozen=True)
class TemplateSource:
    """A template's parts for one channel and locale, and where it came from (file or stored version)."""

    name: str
    channel: str
    locale: str
    parts: dict[str, str]
    origin: str
    kind: str = "marketing"  # or "transactional": order, shipping and account notices


@lru_cache(maxsize=1024)
def _compiled(environment: str, source: str):
    return (_HTML if environment == "html" else _TEXT).from_string(source)


def render(template: TemplateSource, context: dict[str, Any]) -> dict[str, str]:
    """Render every part; raises TemplateProblem naming the part that failed."""
    out = {}
    for part, source in template.parts.items():
        try:
            out[part] = _compiled("html" if part == "html" else "text", source).render(context).strip()
        except TemplateError as error:  # includes SecurityError and UndefinedError
            raise TemplateProblem(part, f"{type(error).__name__}: {error}") from error
        except Exception as error:  # a template can fail in arbitrary ways (e.g. a division by zero)
            raise TemplateProblem(part, f"{type(error).__name__}: {error}") from error
    return out


def check_parts(channel: str, parts: dict[str, str]) -> None:
    """The parts a channel needs are present and no unknown part is given."""
    allowed = PARTS.get(channel)
    if allowed is None:
        raise TemplateProblem("channel", f"unknown channel '{channel}'")
    for part in parts:
        if part not in allowed:
            raise TemplateProblem(part, f"{channel} templates have parts {', '.join(allowed)}")
    for part in REQUIRED_PARTS[channel]:
        if not (parts.get(part) or "").strip():
            raise TemplateProblem(part, "is required")


def check_rendered(channel: str, rendered: dict[str, str], context: dict[str, Any]) -> dict[str, Any]:
    """Channel rules on a rendered message; returns facts about it (SMS length and segments)."""
    if channel == "email":
        link = context.get("unsubscribe_url")
        for part in ("text", "html"):
            if link and link not in rendered.get(part, ""):
                raise TemplateProblem(part, "must contain the unsubscribe link ({{ unsubscribe_url }})")
    if channel == "sms":
        length = sms_length(rendered["body"])
        return {"encoding": length.encoding, "units": length.units, "segments": length.segments}
    return {}


def validate(template: TemplateSource, sample: dict[str, Any]) -> dict[str, Any]:
    """Refuse a template that does not render against a sample context or breaks a channel rule."""
    check_parts(template.channel, template.parts)
    rendered = render(template, sample)
    return {"rendered": rendered, **check_rendered(template.channel, rendered, sample)}


def file_templates(root: Path = TEMPLATE_ROOT) -> dict[tuple[str, str, str], TemplateSource]:
    """Templates shipped as files: templates/<channel>/<name>.<locale>.<part>.j2."""
    found: dict[tuple[str, str, str], dict[str, str]] = {}
    for channel in PARTS:
        for path in sorted((root / channel).glob("*.j2")):
            pieces = path.name[: -len(".j2")].split(".")
            if len(pieces) != 3:
                continue
            name, locale, part = pieces
            found.setdefault((name, channel, locale), {})[part] = path.read_text(encoding="utf-8")
    return {key: TemplateSource(name=key[0], channel=key[1], locale=key[2], parts=parts, origin=f"file:{key[0]}")
            for key, parts in found.items()}


def locale_chain(locale: str, default_locale: str) -> list[str]:
    """Which locales to try, best first: the exact one, then the default, then en-US."""
    chain = [locale, default_locale, "en-US"]
    return list(dict.fromkeys(chain))


Lookup = Callable[[str, str, str], TemplateSource | None]


def resolve(lookup: Lookup, name: str, channel: str, locale: str, default_locale: str,
            available_locales: Callable[[str, str], list[str]]) -> TemplateSource | None:
    """The template for a customer's locale, falling back to the same language, the default locale, then any."""
    for candidate in locale_chain(locale, default_locale):
        found = lookup(name, channel, candidate)
        if found is not None:
            return found
    language = locale.split("-")[0]
    options = available_locales(name, channel)
    for candidate in sorted(options, key=lambda loc: (loc.split("-")[0] != language, loc)):
        found = lookup(name, channel, candidate)
        if found is not None:
            return found
    return None


def sample_context(locale: str, *, with_offer: bool = True, unsubscribe_url: str = "") -> dict[str, Any]:
    """A context every template must render against before it is saved."""
    offer = {"code": "CRM-SAMPLE0001", "amount_off": 50.0, "percent_off": None, "min_spend": 300.0,
             "free_shipping": False, "valid_until": "2026-12-31", "description": "50 off orders of 300 or more"}
    return {"customer": {"external_id": "C-SAMPLE", "locale": locale, "tier": "potential", "layer": "potential",
                         "time_zone": "Asia/Shanghai", "birthday": "1990-05-17"},
            "offer": offer if with_offer else None, "campaign": {"name": "Sample campaign"},
            "shop": {"name": "Sample Shop"}, "unsubscribe_url": unsubscribe_url or "https://shop.example/u/sample"}
