"""A small, safe rule engine: ordered rules of ranges over named metrics, first match wins (no eval).

A rule is `{"name": "VIP", "when": {"recency_days": {"max": 30}, "frequency": {"min": 4}}}`: every
condition must hold (bounds inclusive; `in` / `not_in` for text metrics). A customer no rule matches
gets the rule set's fallback: a named value, or `"nearest"` — the rule with the most conditions met
(on a tie the later, usually humbler, rule) — and the result says which conditions failed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import polars as pl
from pydantic import BaseModel, Field, field_validator, model_validator

# Bounds on what a marketer can store (each costs a polars expression per customer on every run, and the
# unreachable-rule check compares rules pairwise): a tier table has 4-10 rules, a tag set a dozen tags.
MAX_RULES = 100
MAX_CONDITIONS = 20
MAX_VALUES = 200


class Condition(BaseModel):
    """One metric's allowed values: an inclusive numeric range or a set of text values."""

    min: float | None = None
    max: float | None = None
    in_: list[str] | None = Field(default=None, alias="in", max_length=MAX_VALUES)
    not_in: list[str] | None = Field(default=None, max_length=MAX_VALUES)

    model_config = {"populate_by_name": True, "extra": "forbid", "allow_inf_nan": False}

    @model_validator(mode="after")
    def _one_kind(self) -> Condition:
        numeric = self.min is not None or self.max is not None
        textual = self.in_ is not None or self.not_in is not None
        if numeric == textual:
            raise ValueError("give min and/or max, or in / not_in")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"empty range: min {self.min:g} > max {self.max:g}")
        if self.in_ is not None and not self.in_:
            raise ValueError("empty range: 'in' lists no value")
        return self

    def expression(self, metric: str) -> pl.Expr:
        """True where the metric satisfies the condition (null never does)."""
        column = pl.col(metric)
        parts = []
        if self.min is not None:
            parts.append(column >= self.min)
        if self.max is not None:
            parts.append(column <= self.max)
        if self.in_ is not None:
            parts.append(column.is_in(self.in_))
        if self.not_in is not None:
            parts.append(~column.is_in(self.not_in))
        return pl.all_horizontal(parts).fill_null(False)

    def holds(self, value: Any) -> bool:
        """`expression`'s answer for one value, without building a frame (the profile explains one customer)."""
        if value is None:
            return False
        if self.in_ is not None and value not in self.in_:
            return False
        if self.not_in is not None and value in self.not_in:
            return False
        if self.min is not None and not _at_least(value, self.min):
            return False
        return self.max is None or _at_least(self.max, value)

    def contains(self, other: Condition) -> bool:
        """Whether every value `other` admits is admitted here too."""
        if self.in_ is not None or self.not_in is not None:
            if other.in_ is None:
                return False
            allowed = set(other.in_)
            return ((self.in_ is None or allowed <= set(self.in_))
                    and (self.not_in is None or not allowed & set(self.not_in)))
        if other.min is None and other.max is None:
            return False
        low_ok = self.min is None or (other.min is not None and other.min >= self.min)
        high_ok = self.max is None or (other.max is not None and other.max <= self.max)
        return low_ok and high_ok

    def describe(self) -> str:
        """Human-readable form: '31–90', '≥ 4', 'in VIP'."""
        if self.in_ is not None:
            return "in " + ", ".join(self.in_)
        if self.not_in is not None:
            return "not in " + ", ".join(self.not_in)
        if self.min is not None and self.max is not None:
            return f"{self.min:g}–{self.max:g}"
        return f"≥ {self.min:g}" if self.min is not None else f"≤ {self.max:g}"

    def tightened(self, margin: float) -> Condition:
        """The same condition with numeric bounds moved inwards by `margin` (a fraction of the bound)."""
        if self.in_ is not None or self.not_in is not None:
            return self
        low = None if self.min is None else self.min + abs(self.min) * margin
        high = None if self.max is None else self.max - abs(self.max) * margin
        if low is not None and high is not None and low > high:
            low = high = (low + high) / 2
        return Condition(min=low, max=high)


def _at_least(left: float, right: float) -> bool:
    """`left >= right` as polars compares floats: NaN is above every number and equal to itself."""
    if left != left:  # noqa: PLR0124 - NaN is the only value unequal to itself
        return True
    return right == right and left >= right  # noqa: PLR0124


class Rule(BaseModel):
    """One row of a rule set: a name (the assigned value), conditions, and optional documentation."""

    name: str = Field(min_length=1, max_length=32)
    when: dict[str, Condition] = Field(default_factory=dict, max_length=MAX_CONDITIONS)
    expected_share: float | None = Field(default=None, ge=0, le=1)
    goal: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=200)

    model_config = {"extra": "forbid", "allow_inf_nan": False}


def require_unique_names(items: list[Any], what: str) -> list[Any]:
    """Raise ValueError naming the duplicates when two items share a `name`."""
    counts = Counter(item.name for item in items)
    duplicated = sorted(name for name, n in counts.items() if n > 1)
    if duplicated:
        raise ValueError(f"{what} names must be unique: {', '.join(duplicated)}")
    return items


class RuleSet(BaseModel):
    """An ordered rule list over named metrics, with its fallback and its anti-flapping settings."""

    rules: list[Rule] = Field(min_length=1, max_length=MAX_RULES)
    fallback: str = Field(default="nearest", min_length=1, max_length=32)
    window_days: int = Field(default=365, ge=1, le=3650)
    confirm_runs: int = Field(default=2, ge=1, le=30, description="consecutive runs a new value must hold")
    margin: float = Field(default=0.1, ge=0, le=1, description="switch at once when this far inside the new rule")

    model_config = {"extra": "forbid", "allow_inf_nan": False}

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[Rule]) -> list[Rule]:
        return require_unique_names(rules, "rule")

    def values(self) -> list[str]:
        """Every value this rule set can assign."""
        names = [r.name for r in self.rules]
        return names if self.fallback == "nearest" or self.fallback in names else [*names, self.fallback]


class RuleProblem(ValueError):
    """A rule set that parses but cannot be used; `rule` is the offending rule's index."""

    def __init__(self, rule: int, field: str, reason: str) -> None:
        super().__init__(f"rules[{rule}].{field}: {reason}")
        self.rule, self.field, self.reason = rule, field, reason


def check_rule_set(rule_set: RuleSet, metrics: dict[str, Any]) -> None:
    """Raise RuleProblem for an unknown metric or a rule that an earlier rule makes unreachable."""
    for index, rule in enumerate(rule_set.rules):
        for metric, condition in rule.when.items():
            kind = metrics.get(metric)
            if kind is None:
                raise RuleProblem(index, f"when.{metric}", f"unknown metric; known: {', '.join(sorted(metrics))}")
            textual = condition.in_ is not None or condition.not_in is not None
            if textual != (kind == "text"):
                raise RuleProblem(index, f"when.{metric}", f"{metric} is a {kind} metric")
        for earlier_index, earlier in enumerate(rule_set.rules[:index]):
            # Every customer this rule could match already matched the earlier one.
            if all(metric in rule.when and condition.contains(rule.when[metric])
                   for metric, condition in earlier.when.items()):
                raise RuleProblem(index, "when", f"unreachable: every customer it matches is taken by "
                                                 f"rules[{earlier_index}] '{earlier.name}' above it")


def evaluate(metrics: pl.DataFrame, rule_set: RuleSet, *, key: str = "customer_id") -> pl.DataFrame:
    """Assign a value per row: columns key, value, rule (index, null for a fixed fallback), matched, deep.

    `deep` says the row satisfies its rule even with bounds tightened by the rule set's margin.
    """
    rules = rule_set.rules
    met = [[c.expression(m) for m, c in r.when.items()] or [pl.lit(True)] for r in rules]
    matches = [pl.all_horizontal(parts) for parts in met]
    first = pl.lit(None, pl.Int32)
    for index in reversed(range(len(rules))):
        first = pl.when(matches[index]).then(pl.lit(index, pl.Int32)).otherwise(first)
    if rule_set.fallback == "nearest":
        # Most conditions met; a tie goes to the later rule, so a near-miss is never promoted on a tie.
        scores = [pl.sum_horizontal([p.cast(pl.Int32) for p in parts]) for parts in met]
        best, best_score = pl.lit(0, pl.Int32), scores[0]
        for index in range(1, len(rules)):
            better = scores[index] >= best_score
            best = pl.when(better).then(pl.lit(index, pl.Int32)).otherwise(best)
            best_score = pl.when(better).then(scores[index]).otherwise(best_score)
        fallback_rule, fallback_value = best, None
    else:
        fallback_rule, fallback_value = pl.lit(None, pl.Int32), rule_set.fallback
    names = pl.Series([r.name for r in rules], dtype=pl.String)
    # margin 0 turns the shortcut off: every move then waits for confirm_runs.
    deep_parts = [pl.all_horizontal([c.tightened(rule_set.margin).expression(m) for m, c in r.when.items()]
                                    or [pl.lit(True)]) if rule_set.margin > 0 else pl.lit(False) for r in rules]
    frame = metrics.select(pl.col(key), first.alias("_first"), fallback_rule.alias("_fallback"),
                           *[d.alias(f"_deep{i}") for i, d in enumerate(deep_parts)])
    frame = frame.with_columns(
        pl.col("_first").is_not_null().alias("matched"),
        pl.coalesce("_first", "_fallback").alias("rule"))
    deep = pl.lit(False)
    for index in range(len(rules)):
        deep = pl.when(pl.col("rule") == index).then(pl.col(f"_deep{index}")).otherwise(deep)
    value = pl.col("rule").replace_strict(list(range(len(rules))), names.to_list(), default=None,
                                          return_dtype=pl.String)
    if fallback_value is not None:
        value = pl.when(pl.col("matched")).then(value).otherwise(pl.lit(fallback_value))
    return frame.select(key, value.alias("value"), pl.col("rule"), "matched", (deep & pl.col("matched")).alias("deep"))


def explain(values: dict[str, Any], rule_set: RuleSet) -> dict[str, Any]:
    """Why one customer got its value: the matched rule's conditions with the values, or every failure."""
    # Condition.holds gives the run's polars answer for one value (a property test holds them equal).
    checks = []
    for rule in rule_set.rules:
        failed = []
        for metric, condition in rule.when.items():
            if not condition.holds(values.get(metric)):
                failed.append({"metric": metric, "value": values.get(metric), "needs": condition.describe()})
        checks.append({"rule": rule.name, "failed": failed})
        if not failed:
            return {"matched": rule.name, "conditions": [
                {"metric": m, "value": values.get(m), "threshold": c.describe()} for m, c in rule.when.items()]}
    return {"matched": None, "fallback": rule_set.fallback, "failed": checks}

