"""BG/NBD (Fader, Hardie & Lee 2005): likelihood with scipy, P(alive) and expected purchases; no `lifetimes`.

Inputs per customer, in one time unit (weeks here): x = repeat purchases, t_x = time of the last purchase
since the first, T = time since the first purchase. Estimator in scikit-learn style: parameters in
`__init__`, `fit()` returns self, learned attributes end in `_`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special


def log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray) -> np.ndarray:
    """Per-customer log-likelihood of (x, t_x, T) under r, alpha, a, b."""
    r, alpha, a, b = params
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + big_t)
    repeat = x > 0
    a4 = np.where(repeat, np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x), -np.inf)
    return a1 + a2 + np.logaddexp(a3, a4)


@dataclass
class BetaGeometricNBD:
    """BG/NBD fitted by maximum likelihood (log-parameters, L-BFGS-B, a small L2 penalty for stability)."""

    penalizer: float = 0.0
    max_iter: int = 500

    def fit(self, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray) -> BetaGeometricNBD:
        """Estimate r, alpha, a, b from per-customer summaries."""
        x, t_x, big_t = (np.asarray(v, dtype=float) for v in (x, t_x, big_t))
        scale = max(float(np.mean(big_t)), 1e-9)  # fit on rescaled time, then undo: better conditioned

        def loss(log_params: np.ndarray) -> float:
            params = np.exp(log_params)
            value = -np.mean(log_likelihood(params, x, t_x / scale, big_t / scale))
            return float(value + self.penalizer * np.sum(params ** 2))

        start = np.log([1.0, 1.0, 1.0, 1.0])
        result = optimize.minimize(loss, start, method="L-BFGS-B", bounds=[(-10, 10)] * 4,
                                   options={"maxiter": self.max_iter})
        r, alpha, a, b = np.exp(result.x)
        self.r_, self.alpha_, self.a_, self.b_ = float(r), float(alpha * scale), float(a), float(b)
        self.converged_ = bool(result.success)
        return self

    @property
    def params_(self) -> dict[str, float]:
        """The fitted parameters by name."""
        return {"r": self.r_, "alpha": self.alpha_, "a": self.a_, "b": self.b_}

    def probability_alive(self, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray) -> np.ndarray:
        """P(the customer is still active) given their history."""
        x, t_x, big_t = (np.asarray(v, dtype=float) for v in (x, t_x, big_t))
        r, alpha, a, b = self.r_, self.alpha_, self.a_, self.b_
        log_ratio = (r + x) * (np.log(alpha + big_t) - np.log(alpha + t_x))
        odds = np.where(x > 0, np.exp(np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) + log_ratio), 0.0)
        return 1.0 / (1.0 + odds)

    def expected_purchases(self, horizon: float, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray) -> np.ndarray:
        """Expected purchases in the next `horizon` time units given the history."""
        x, t_x, big_t = (np.asarray(v, dtype=float) for v in (x, t_x, big_t))
        r, alpha, a, b = self.r_, self.alpha_, self.a_, self.b_
        z = horizon / (alpha + big_t + horizon)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
        head = (a + b + x - 1) / (a - 1)
        body = 1 - np.exp((r + x) * (np.log(alpha + big_t) - np.log(alpha + big_t + horizon))) * hyp
        log_ratio = (r + x) * (np.log(alpha + big_t) - np.log(alpha + t_x))
        odds = np.where(x > 0, np.exp(np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) + log_ratio), 0.0)
        return np.nan_to_num(head * body / (1 + odds), nan=0.0, posinf=0.0)


def simulate(n: int, r: float, alpha: float, a: float, b: float, big_t: float,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw (x, t_x, T) for n customers observed for `big_t` after their first purchase (for tests)."""
    rate = rng.gamma(r, 1 / alpha, n)
    dropout = rng.beta(a, b, n)
    x = np.zeros(n)
    t_x = np.zeros(n)
    for i in range(n):  # per customer on purpose: a test fixture, not a hot path
        now = 0.0
        while True:
            now += rng.exponential(1 / rate[i])
            if now > big_t:
                break
            x[i] += 1
            t_x[i] = now
            if rng.random() < dropout[i]:
                break
    return x, t_x, np.full(n, big_t)
