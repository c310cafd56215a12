"""Statistics for measurement, pure: differences of rates and of means with intervals and tests, sample sizes.

Rates: the difference treated − control with the Agresti–Caffo interval (one success and one failure added to each
arm before the Wald formula) and the matching z-test on the same adjusted estimate and error (statsmodels'
`confint_proportions_2indep` / `test_proportions_2indep`, method "agresti-caffo"), so the test and the interval
never disagree. Unlike the plain Wald interval it stays honest on small arms and on rates of 0 or 1 (a 1-member
holdout does not pretend to certainty); `small_sample` flags arms too small for any normal approximation.
Means (revenue per recipient): Welch's t-test and its interval (`scipy.stats`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


def z_value(confidence: float) -> float:
    """The two-sided normal quantile for a confidence level (1.96 for 95%)."""
    return float(stats.norm.ppf(0.5 + confidence / 2))


@dataclass(frozen=True)
class Comparison:
    """A difference treated − control with its interval and test (None where it cannot be computed)."""

    difference: float | None
    low: float | None
    high: float | None
    p_value: float | None
    significant: bool
    confidence: float

    def as_dict(self) -> dict:
        """JSON-friendly fields."""
        return asdict(self)


@dataclass(frozen=True)
class RateDifference(Comparison):
    """Conversion rates of two groups and their difference (Wald interval and test)."""

    treated_n: int = 0
    treated_conversions: int = 0
    control_n: int = 0
    control_conversions: int = 0
    treated_rate: float | None = None
    control_rate: float | None = None
    small_sample: bool = False


def rate_difference(treated_conversions: int, treated_n: int, control_conversions: int, control_n: int,
                    confidence: float = 0.95) -> RateDifference:
    """Treated rate − control rate (as observed) with the Agresti–Caffo interval and its two-sided z-test, so
    "significant" means exactly "the interval excludes 0"; None where a group is empty."""
    p1 = treated_conversions / treated_n if treated_n else None
    p0 = control_conversions / control_n if control_n else None
    groups = {"treated_n": treated_n, "treated_conversions": treated_conversions, "control_n": control_n,
              "control_conversions": control_conversions, "treated_rate": p1, "control_rate": p0,
              "small_sample": _small(treated_conversions, treated_n) or _small(control_conversions, control_n)}
    if p1 is None or p0 is None:
        return RateDifference(None, None, None, None, False, confidence, **groups)
    adjusted, se = _adjusted(treated_conversions, treated_n, control_conversions, control_n)
    half = z_value(confidence) * se
    p_value = float(2 * stats.norm.sf(abs(adjusted) / se))
    significant = p_value < 1 - confidence
    # A difference of rates lies in [-1, 1]; the adjusted interval can reach past it at the extremes.
    return RateDifference(p1 - p0, max(-1.0, adjusted - half), min(1.0, adjusted + half), p_value, significant,
                          confidence, **groups)


def _adjusted(x1: int, n1: int, x0: int, n0: int) -> tuple[float, float]:
    """Agresti–Caffo: the difference of (x + 1) / (n + 2) and its standard error; never zero."""
    q1, q0 = (x1 + 1) / (n1 + 2), (x0 + 1) / (n0 + 2)
    return q1 - q0, math.sqrt(q1 * (1 - q1) / (n1 + 2) + q0 * (1 - q0) / (n0 + 2))


def _small(conversions: int, n: int) -> bool:
    """Fewer than 10 conversions or 10 non-conversions: the normal approximation is rough there."""
    return min(conversions, n - conversions) < 10


@dataclass(frozen=True)
class MeanDifference(Comparison):
    """Means of two groups (e.g. revenue per recipient) and their difference (Welch interval and test)."""

    treated_mean: float | None = None
    control_mean: float | None = None


def mean_difference(treated: np.ndarray, control: np.ndarray, confidence: float = 0.95) -> MeanDifference:
    """Welch's t-test and interval for mean(treated) − mean(control); None where a group has < 2 values."""
    treated, control = np.asarray(treated, dtype=float), np.asarray(control, dtype=float)
    means = {"treated_mean": float(treated.mean()) if treated.size else None,
             "control_mean": float(control.mean()) if control.size else None}
    mean1, mean0 = means["treated_mean"], means["control_mean"]
    difference = mean1 - mean0 if mean1 is not None and mean0 is not None else None
    if treated.size < 2 or control.size < 2:
        return MeanDifference(difference, None, None, None, False, confidence, **means)
    if treated.var() == 0 and control.var() == 0:  # no spread: the difference is exact, no test to run
        return MeanDifference(difference, difference, difference, None, False, confidence, **means)
    result = stats.ttest_ind(treated, control, equal_var=False)
    interval = result.confidence_interval(confidence)
    p_value = float(result.pvalue)
    return MeanDifference(difference, float(interval.low), float(interval.high), p_value, p_value < 1 - confidence,
                          confidence, **means)


def sample_size_per_arm(baseline: float, tolerated_error: float, confidence: float = 0.95) -> int:
    """The seed's rule: n = z²·p(1−p)/E² members per arm, rounded up."""
    if not 0 < baseline < 1 or tolerated_error <= 0:
        raise ValueError("baseline must be in (0, 1) and the tolerated error above 0")
    z = z_value(confidence)
    return math.ceil(z * z * baseline * (1 - baseline) / (tolerated_error * tolerated_error) - 1e-9)


def sample_still_needed(result: RateDifference, power: float = 0.8) -> dict[str, int] | None:
    """While a difference is not significant: how many more members each arm needs (same split between arms)
    for the observed difference, if it is real, to be significant with `power`. None when nothing was seen.

    The arms' variances are the Agresti–Caffo ones, which never vanish: a 1-member holdout with no conversion does
    not claim to know its rate exactly (the plain estimate, variance 0, said "3 more members would settle it")."""
    if result.difference is None or result.significant:
        return None if result.difference is None else {"treated": 0, "control": 0}
    if result.difference == 0:
        return None
    _, se = _adjusted(result.treated_conversions, result.treated_n, result.control_conversions, result.control_n)
    z = z_value(result.confidence) + float(stats.norm.ppf(power))
    factor = (z * se / abs(result.difference)) ** 2  # standard errors shrink as 1/sqrt(factor)
    return {"treated": max(0, math.ceil((result.treated_n + 2) * factor) - 2 - result.treated_n),
            "control": max(0, math.ceil((result.control_n + 2) * factor) - 2 - result.control_n)}
