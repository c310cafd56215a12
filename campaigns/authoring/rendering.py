"""Message templates: files in templates/ and templates stored through the API, rendered in a Jinja2 sandbox.

Marketers write templates, so rendering uses `SandboxedEnvironment` (no reaching Python internals) with
`StrictUndefined` (a misspelt variable is an error, not an empty string). HTML parts are autoescaped.
"""

from __future__ import annotations

import contextvars
import functools
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, StrictUndefined, TemplateError, nodes
from jinja2 import visitor as nodes_visitor
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, markup_join
from jinja2.sandbox import SandboxedEnvironment

from campaigns.authoring.sms import sms_length
from kit.channels import CHANNELS
from kit.settings import PROJECT_ROOT

TEMPLATE_ROOT = PROJECT_ROOT / "templates"
# Render budget, per render, in preview, at save and in dispatch alike: a marketer's template must not be able to
# exhaust the service ('%999999999s' % 'x' once took 10 s and 4.4 GB; a branch the sample customer never takes
# hid loops costing seconds per message). Output per part, loop iterations, wall time, and the size of any string,
# list or number an operator or filter may build.
MAX_PART_CHARS = {"body": 2_000, "title": 200, "subject": 300, "text": 100_000, "html": 200_000}
MAX_SOURCE_CHARS = 100_000  # a template part as written
MAX_LOOP_ITERATIONS = 10_000
MAX_CALLS = 10_000  # macro, method and global calls per part
MAX_RENDER_SECONDS = 0.5
MAX_VALUE_CHARS = 200_000  # a string or list any single operation may produce
MAX_FORMAT_WIDTH = 1_000
MAX_POWER_DIGITS = 1_000
_FORMAT_WIDTH = re.compile(r"%[-+ #0]*(\*|\d+)?(?:\.(\*|\d+))?|\{[^{}]*?:[^{}]*?(\d+)[^{}]*\}")


_NESTED_SPEC = re.compile(r"\{[^{}]*:[^{}]*\{")


class RenderBudgetExceeded(TemplateError):
    """A template that would take more than its render budget (output, loops, time or value size)."""


@dataclass
class _Budget:
    deadline: float
    iterations: int = 0
    calls: int = 0


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("render_budget", default=None)


def _spend(what: str = "") -> _Budget | None:
    budget = _BUDGET.get()
    if budget is not None and time.perf_counter() > budget.deadline:
        raise RenderBudgetExceeded(f"render took longer than {MAX_RENDER_SECONDS:g} s{what}")
    return budget


def _loop_budget(iterable: Any) -> Any:
    """Every template loop runs through this: a render may iterate MAX_LOOP_ITERATIONS times in all."""
    for item in iterable:
        budget = _spend()
        if budget is not None:
            budget.iterations += 1
            if budget.iterations > MAX_LOOP_ITERATIONS:
                raise RenderBudgetExceeded(f"loops ran more than {MAX_LOOP_ITERATIONS} iterations")
        yield item


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict) else 0


def _check_size(value: Any, what: str) -> Any:
    if _size(value) > MAX_VALUE_CHARS:
        raise RenderBudgetExceeded(f"{what} would build a value of more than {MAX_VALUE_CHARS} items")
    return value


def _check_widths(pattern: str, what: str) -> None:
    for match in _FORMAT_WIDTH.finditer(pattern):
        for number in match.groups():
            if number and number != "*" and int(number) > MAX_FORMAT_WIDTH:
                raise RenderBudgetExceeded(f"{what}: a width or precision above {MAX_FORMAT_WIDTH}")
            if number == "*":
                raise RenderBudgetExceeded(f"{what}: '*' widths are not allowed")


def _concat(*parts: Any) -> str:
    """The ~ operator, bounded: `{% set a = a ~ a %}` repeated would double a string to gigabytes. Joined as Jinja
    joins it (markup_join: a safe part keeps the result safe and the others escaped)."""
    texts = [p if isinstance(p, str) else str(p) for p in parts]
    if sum(len(t) for t in texts) > MAX_VALUE_CHARS:
        raise RenderBudgetExceeded(f"~ would build a string of more than {MAX_VALUE_CHARS} characters")
    return markup_join(parts)


class _Bounded(nodes_visitor.NodeTransformer):
    """Rewrites a parsed template: every loop's iterable through _loop_budget, every ~ through _concat."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.Name("_loop_budget", "load"), [node.iter], [], None, None)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(nodes.Name("_concat", "load"), list(node.nodes), [], None, None)


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose arguments cannot ask for a huge result and whose result is size-checked."""

    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _spend(f" (in |{name})")
        values = [a for a in (*args, *kwargs.values()) if not isinstance(a, Context | EvalContext | Environment)]
        if name in WIDTH_FILTERS and any(isinstance(v, int) and v > MAX_FORMAT_WIDTH for v in values[1:]):
            raise RenderBudgetExceeded(f"|{name}: a width above {MAX_FORMAT_WIDTH}")
        if name == "format" and values and isinstance(values[0], str):
            _check_widths(values[0], "|format")
        if name == "replace" and len(values) >= 3 and all(isinstance(v, str) for v in values[:3]) and values[1]:
            grown = len(values[0]) + values[0].count(values[1]) * (len(values[2]) - len(values[1]))
            if grown > MAX_VALUE_CHARS:
                raise RenderBudgetExceeded(f"|replace would build more than {MAX_VALUE_CHARS} characters")
        return _check_size(function(*args, **kwargs), f"|{name}")

    return bounded


WIDTH_FILTERS = {"center", "indent", "wordwrap", "truncate", "filesizeformat", "batch", "slice"}


class BudgetedEnvironment(SandboxedEnvironment):
    """The sandbox, plus the render budget: sized operators, bounded str.format, filters and loops."""

    intercepted_binops = frozenset(["*", "**", "%", "+", "//"])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.globals.update(_loop_budget=_loop_budget, _concat=_concat)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    def _generate(self, source: nodes.Template, name: str | None, filename: str | None,
                  defer_init: bool = False) -> str:
        return super()._generate(_Bounded().visit(source), name, filename, defer_init)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        """Every call a template makes (macros, methods, globals) spends from the budget: a macro calling itself
        twice per level (2^n calls, no loop, no output until the end) once ran for 20 s before any check."""
        budget = _spend(" (in a call)")
        if budget is not None:
            budget.calls += 1
            if budget.calls > MAX_CALLS:
                raise RenderBudgetExceeded(f"more than {MAX_CALLS} calls")
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Refuse what would build a huge value before building it."""
        _spend()
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if _size(sequence) and isinstance(times, int) and _size(sequence) * times > MAX_VALUE_CHARS:
                    raise RenderBudgetExceeded(f"* would build more than {MAX_VALUE_CHARS} items")
        elif operator == "**":
            if isinstance(left, int | float) and isinstance(right, int | float) and abs(left) > 1 and \
                    right * math.log10(abs(left)) > MAX_POWER_DIGITS:
                raise RenderBudgetExceeded(f"** would build a number of more than {MAX_POWER_DIGITS} digits")
        elif operator == "%" and isinstance(left, str):
            _check_widths(left, "% formatting")
        elif operator == "+" and _size(left) + _size(right) > MAX_VALUE_CHARS:
            raise RenderBudgetExceeded(f"+ would build more than {MAX_VALUE_CHARS} items")
        return _check_size(super().call_binop(context, operator, left, right), operator)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """str.format / format_map as templates reach them, with widths bounded and the result sized."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        pattern = getattr(value, "__self__", "")

        @functools.wraps(wrapped)
        def bounded(*args: Any, **kwargs: Any) -> str:
            if _NESTED_SPEC.search(str(pattern)):
                raise RenderBudgetExceeded("str.format: widths taken from arguments ({:{w}}) are not allowed")
            _check_widths(str(pattern), "str.format")
            return _check_size(wrapped(*args, **kwargs), "str.format")

        return bounded


_TEXT = BudgetedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
_HTML = BudgetedEnvironment(undefined=StrictUndefined, autoescape=True)


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
    """Render every part within the render budget; raises TemplateProblem naming the part that failed."""
    out = {}
    for part, source in template.parts.items():
        token = _BUDGET.set(_Budget(deadline=time.perf_counter() + MAX_RENDER_SECONDS))
        try:
            out[part] = _render_part(part, source, context)
        except TemplateError as error:  # includes SecurityError, UndefinedError and RenderBudgetExceeded
            raise TemplateProblem(part, f"{type(error).__name__}: {error}") from error
        except Exception as error:  # a template can fail in arbitrary ways (e.g. a division by zero)
            raise TemplateProblem(part, f"{type(error).__name__}: {error}") from error
        finally:
            _BUDGET.reset(token)
    return out


def _render_part(part: str, source: str, context: dict[str, Any]) -> str:
    """Stream one part, stopping as soon as it outgrows its limit (never building the whole of a huge output)."""
    limit = MAX_PART_CHARS.get(part, MAX_VALUE_CHARS)
    pieces, length = [], 0
    for piece in _compiled("html" if part == "html" else "text", source).generate(context):
        length += len(piece)
        if length > limit:
            raise RenderBudgetExceeded(f"output longer than {limit} characters")
        _spend()
        pieces.append(piece)
    return "".join(pieces).strip()


def check_parts(channel: str, parts: dict[str, str]) -> None:
    """The parts a channel needs are present and no unknown part is given."""
    if channel not in CHANNELS:
        raise TemplateProblem("channel", f"unknown channel '{channel}'")
    spec = CHANNELS.get(channel)
    allowed = spec.parts
    for part in parts:
        if part not in allowed:
            raise TemplateProblem(part, f"{channel} templates have parts {', '.join(allowed)}")
    for part in spec.required_parts:
        if not (parts.get(part) or "").strip():
            raise TemplateProblem(part, "is required")


def check_rendered(channel: str, rendered: dict[str, str], context: dict[str, Any]) -> dict[str, Any]:
    """Channel rules on a rendered message; returns facts about it (SMS length and segments)."""
    spec = CHANNELS.get(channel)
    link = context.get("unsubscribe_url")
    for part in spec.unsubscribe_parts:
        if link and link not in rendered.get(part, ""):
            raise TemplateProblem(part, "must contain the unsubscribe link ({{ unsubscribe_url }})")
    if spec.segments:
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
    for channel in CHANNELS.names():
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
