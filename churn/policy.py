"""The at-risk flag policy (pure): which customers a retention team should treat, chosen on the validation window.

Three policies, each a default the shop can change:
- precision: the largest flagged set whose precision reaches the target, never below base rate + `min_lift_points`;
- capacity: the `daily_capacity` riskiest customers (top-k the team can treat);
- value: flag when saved margin × P(churn) × expected response ≥ offer + message cost.
A policy that cannot be met flags nobody and says why, rather than flagging everyone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

NEVER = 1.01  # a threshold no probability reaches: the flag is off
MIN_FLAGGED = 50  # the first few flags are noise: a precision is read only from this many on

PolicyKind = Literal["precision", "capacity", "value"]


@dataclass(frozen=True)
class FlagPolicy:
    """How the at-risk threshold is chosen (defaults from the shop's plans: warning precision 75%)."""

    kind: PolicyKind = "precision"
    target_precision: float = 0.75
    min_lift_points: float = 0.10
    daily_capacity: int = 1000
    saved_margin: float = 120.0
    response_rate: float = 0.15
    offer_cost: float = 10.0
    message_cost: float = 0.5

    def as_dict(self) -> dict[str, Any]:
        """The policy as stored with a model."""
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: dict[str, Any] | None) -> FlagPolicy:
        """A policy stored with a model (older models had none: the default)."""
        return cls(**stored) if stored else cls()


@dataclass(frozen=True)
class FlagDecision:
    """The chosen threshold, whether the policy's aim was met, and what it means in words."""

    threshold: float
    met: bool
    aim: str
    note: str


def value_threshold(policy: FlagPolicy) -> float:
    """The probability from which a treatment pays: (offer + message) / (saved margin × response)."""
    return (policy.offer_cost + policy.message_cost) / max(policy.saved_margin * policy.response_rate, 1e-9)


def capacity_threshold(probability: np.ndarray, capacity: int) -> float:
    """The score of the `capacity`-th riskiest customer (NEVER when there is nobody to flag)."""
    n = len(probability)
    k = min(capacity, n)
    return NEVER if k <= 0 else float(np.partition(probability, n - k)[n - k])


def day_threshold(policy: FlagPolicy, chosen: float, probability: np.ndarray) -> float:
    """The threshold on one day's scores: the one chosen at training, except under the capacity policy — a number
    of customers a day, so that day's k riskiest."""
    if policy.kind != "capacity" or not len(probability):
        return chosen
    return capacity_threshold(probability, policy.daily_capacity)


def choose_flag(target: np.ndarray, probability: np.ndarray, policy: FlagPolicy,
                population: int | None = None) -> FlagDecision:
    """Choose the threshold on a labelled window's calibrated probabilities.

    `population` is the size of the whole scored population when `probability` is a sample of it, so that a
    capacity of k customers a day becomes the same share of the sample."""
    base_rate = float(target.mean()) if len(target) else 0.0
    if policy.kind == "capacity":
        share = len(probability) / population if population else 1.0
        k = min(round(policy.daily_capacity * share), len(probability))
        if k == 0:
            return FlagDecision(NEVER, False, f"top {policy.daily_capacity:,}", "nobody to flag")
        return FlagDecision(capacity_threshold(probability, k), True, f"top {policy.daily_capacity:,}",
                            f"the {policy.daily_capacity:,} riskiest customers a day")
    if policy.kind == "value":
        threshold = value_threshold(policy)
        if threshold > 1:
            return FlagDecision(NEVER, False, f"P(churn) ≥ {threshold:.2f}",
                                "no customer can be worth treating: offer and message cost more than the margin "
                                "saved at full risk")
        return FlagDecision(threshold, True, f"P(churn) ≥ {threshold:.2f}",
                            f"treating pays from P(churn) {threshold:.2f} (saved margin {policy.saved_margin:g} × "
                            f"response {policy.response_rate:.0%} ≥ offer {policy.offer_cost:g} + message "
                            f"{policy.message_cost:g})")
    aim = min(max(policy.target_precision, base_rate + policy.min_lift_points), 1.0)
    order = np.argsort(-probability, kind="stable")
    ranked = probability[order]
    precision = np.cumsum(target[order]) / np.arange(1, len(order) + 1)
    # Only cut between distinct scores, and ignore the noisy first few flags.
    distinct = np.r_[ranked[1:] != ranked[:-1], True] if len(ranked) else np.array([], dtype=bool)
    enough = np.arange(len(order)) >= min(MIN_FLAGGED, len(order)) - 1
    ok = np.nonzero(distinct & enough & (precision >= aim))[0]
    if len(ok) == 0:
        best = float(np.max(np.where(distinct & enough, precision, 0.0))) if len(order) else 0.0
        return FlagDecision(NEVER, False, f"precision ≥ {aim:.0%}",
                            f"no threshold reaches precision {aim:.0%} (best {best:.0%} at base rate "
                            f"{base_rate:.0%}): nobody is flagged — lower the target or use the capacity policy")
    return FlagDecision(float(ranked[ok[-1]]), True, f"precision ≥ {aim:.0%}",
                        f"the largest set with precision ≥ {aim:.0%} (base rate {base_rate:.0%})")


def flag_metrics(target: np.ndarray, probability: np.ndarray, threshold: float) -> dict[str, Any]:
    """Base rate, flagged count and share, precision, recall and lift at the flag."""
    return flagged_metrics(target, probability >= threshold)


def flagged_metrics(target: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    """Base rate, flagged count and share, precision, recall and lift of a given flag."""
    base_rate = float(target.mean()) if len(target) else 0.0
    hits = float(np.sum(flagged & (target == 1)))
    precision = hits / max(float(flagged.sum()), 1.0)
    return {"base_rate": round(base_rate, 4), "flagged": int(flagged.sum()),
            "flagged_share": round(float(flagged.mean()) if len(flagged) else 0.0, 4),
            "precision": round(precision, 4) if flagged.any() else None,
            "recall": round(hits / max(float(target.sum()), 1.0), 4),
            "lift": round(precision / base_rate, 3) if flagged.any() and base_rate > 0 else None}


def risk_levels(probability: np.ndarray, threshold: float, base_rate: float) -> np.ndarray:
    """high: flagged by the policy; medium: riskier than the validation window's base rate; low: the rest."""
    return np.where(probability >= threshold, "high", np.where(probability >= base_rate, "medium", "low"))
