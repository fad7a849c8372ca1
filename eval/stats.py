"""The statistics of ``daat experiment``: summaries over seeds and paired tests between methods.

- ``mean_std``: mean and sample standard deviation (n - 1 in the denominator) over seeds.
- ``t_interval``: the two-sided Student-t confidence interval of a mean over seeds,
  mean ± t_{(1+level)/2, n-1} · s / √n (n ≥ 2). The t quantile is computed here (regularised
  incomplete beta by continued fraction, inverted by bisection): no scipy dependency.
- ``mcnemar_exact``: the exact (binomial) McNemar test of two classifiers on the same samples:
  b = #(A right, B wrong), c = #(A wrong, B right), p = min(1, 2 · P[Bin(b + c, ½) ≤ min(b, c)]).
- ``paired_bootstrap``: the mean paired difference over a [seeds, samples] array and its percentile
  bootstrap interval. Each replicate draws seeds with replacement AND samples with replacement
  (the same sample draw for every seed: the samples are shared), so the interval carries both the
  seed-to-seed and the sample-to-sample variation. Draw order (fixed, for reproducibility): per
  replicate, S seed indices then N sample indices from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def mean_std(values) -> tuple[float | None, float | None]:
    """(mean, sample std); (None, None) for no values, std None for one value."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return None, None
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


# -- Student t ---------------------------------------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for aa in (
            m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
            -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (0 < p < 1)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def t_interval(values, level: float = 0.95) -> tuple[float, float] | None:
    """The ``level`` confidence interval of the mean of ``values``; None for fewer than 2."""
    values = [v for v in values if v is not None]
    mean, std = mean_std(values)
    n = len(values)
    if std is None:
        return None
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


# -- paired tests ------------------------------------------------------------------------------
@dataclass(frozen=True)
class McNemar:
    b: int  # A right, B wrong
    c: int  # A wrong, B right
    p: float  # two-sided exact p-value


def mcnemar_exact(a_correct, b_correct) -> McNemar:
    """Exact McNemar test of paired correctness arrays (same samples, same order)."""
    a, b_ = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b_.shape}")
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    n = b + c
    if n == 0:
        return McNemar(b, c, 1.0)
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return McNemar(b, c, min(1.0, 2 * tail / 2**n))


@dataclass(frozen=True)
class Bootstrap:
    mean: float  # mean paired difference over all seeds x samples
    low: float
    high: float
    seeds: int
    samples: int
    replicates: int
    seed: int


def paired_bootstrap(diff, replicates: int = 2000, seed: int = 0, level: float = 0.95) -> Bootstrap:
    """Mean of ``diff`` [seeds, samples] and its percentile bootstrap interval (see module doc)."""
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(
            f"paired_bootstrap needs a non-empty [seeds, samples] array, got shape {d.shape}"
        )
    n_seeds, n_samples = d.shape
    rng = np.random.default_rng(seed)
    reps = np.empty(replicates)
    for r in range(replicates):
        seed_weight = np.bincount(rng.integers(0, n_seeds, n_seeds), minlength=n_seeds)
        sample_weight = np.bincount(rng.integers(0, n_samples, n_samples), minlength=n_samples)
        reps[r] = seed_weight @ d @ sample_weight / (n_seeds * n_samples)
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return Bootstrap(float(d.mean()), float(low), float(high), n_seeds, n_samples, replicates, seed)
