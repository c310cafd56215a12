"""Gamma-Gamma spend model (Fader & Hardie 2013), with scipy: a customer's expected order value given their
repeat orders' mean. Paired with BG/NBD's expected purchases it gives predicted lifetime value.

Each order value is Gamma(p, ν) with the customer's ν ~ Gamma(q, γ); `x` repeat orders with mean `m`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special


def log_likelihood(params: np.ndarray, x: np.ndarray, mean_value: np.ndarray) -> np.ndarray:
    """Per-customer log-likelihood of (x, m) under p, q, γ (up to terms free of the parameters: none dropped)."""
    p, q, gamma = params
    px = p * x
    return (special.gammaln(px + q) - special.gammaln(px) - special.gammaln(q) + q * np.log(gamma)
            + (px - 1) * np.log(mean_value) + px * np.log(x) - (px + q) * np.log(gamma + mean_value * x))


@dataclass
class GammaGamma:
    """Gamma-Gamma fitted by maximum likelihood on customers with repeat orders (log-parameters, L-BFGS-B)."""

    max_iter: int = 500

    def fit(self, x: np.ndarray, mean_value: np.ndarray) -> GammaGamma:
        """Estimate p, q, γ from repeat-order counts (≥ 1) and their mean values (> 0)."""
        x, mean_value = np.asarray(x, dtype=float), np.asarray(mean_value, dtype=float)
        keep = (x > 0) & (mean_value > 0)
        x, mean_value = x[keep], mean_value[keep]
        if x.size < 10:
            raise ValueError("Gamma-Gamma needs at least 10 customers with repeat orders")
        scale = float(np.mean(mean_value))  # fit on rescaled money, then undo: better conditioned

        def loss(log_params: np.ndarray) -> float:
            return float(-np.mean(log_likelihood(np.exp(log_params), x, mean_value / scale)))

        result = optimize.minimize(loss, np.log([2.0, 3.0, 2.0]), method="L-BFGS-B", bounds=[(-8, 8)] * 3,
                                   options={"maxiter": self.max_iter})
        p, q, gamma = np.exp(result.x)
        self.p_, self.q_, self.gamma_ = float(p), float(q), float(gamma * scale)
        self.converged_ = bool(result.success)
        return self

    @property
    def params_(self) -> dict[str, float]:
        """The fitted parameters by name."""
        return {"p": self.p_, "q": self.q_, "gamma": self.gamma_}

    def population_mean(self) -> float:
        """The expected order value of a customer we know nothing about: γp/(q − 1) (q > 1)."""
        return self.gamma_ * self.p_ / (self.q_ - 1) if self.q_ > 1 else float("nan")

    def expected_value(self, x: np.ndarray, mean_value: np.ndarray) -> np.ndarray:
        """Expected order value per customer: a weighted mean of the population's and their own (x = 0: the
        population's)."""
        x, mean_value = np.asarray(x, dtype=float), np.asarray(mean_value, dtype=float)
        p, q, gamma = self.p_, self.q_, self.gamma_
        own = np.where(x > 0, np.nan_to_num(mean_value), 0.0)
        return (gamma + own * x) * p / (p * x + q - 1)
