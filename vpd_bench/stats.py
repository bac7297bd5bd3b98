"""Small, dependency-light statistics for scoring and reporting.

- ``pass_at_k``: the unbiased pass@k estimator of Chen et al. (2021), "Evaluating Large Language
  Models Trained on Code", from n samples of which c are correct.
- ``avg_at_k``: the mean score of the k samples drawn for one problem (avg@k).
- ``mean_stderr``: mean and standard error of the mean over seeds.
- ``bootstrap_ci``: a percentile bootstrap confidence interval of the mean.

Missing values (``None`` and NaN) are dropped by the aggregation helpers, so a seed that never
produced a number does not silently count as zero.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples, drawn without replacement from n samples of
    which c are correct, is correct: ``1 - C(n-c, k) / C(n, k)``.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which never forms the (huge) binomial
    coefficients and so stays exact enough for n in the thousands.
    """
    if not (isinstance(n, (int, np.integer)) and isinstance(c, (int, np.integer))
            and isinstance(k, (int, np.integer))):
        raise TypeError(f"pass_at_k needs integers, got n={n!r}, c={c!r}, k={k!r}")
    if n < 1 or k < 1:
        raise ValueError(f"pass_at_k needs n >= 1 and k >= 1, got n={n}, k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got c={c}, n={n}")
    if k > n:
        raise ValueError(f"pass_at_k needs k <= n (cannot draw {k} of {n} samples)")
    if n - c < k:
        # Every draw of k samples contains a correct one.
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def avg_at_k(scores: Sequence[float]) -> float:
    """avg@k of one problem: the mean score of its k samples (scores in [0, 1]; a pass/fail
    verdict is 1.0 / 0.0). Equals c / n for binary scores. Raises on an empty sequence."""
    values = [float(s) for s in scores]
    if not values:
        raise ValueError("avg_at_k needs at least one sample score")
    return float(sum(values) / len(values))


def _clean(values: Iterable[float | None]) -> list[float]:
    out = []
    for v in values:
        if v is None:
            continue
        v = float(v)
        if math.isnan(v):
            continue
        out.append(v)
    return out


def mean_stderr(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and standard error of the mean, ``std(ddof=1) / sqrt(n)``, over the values that are
    present (``None`` and NaN are dropped).

    With one value the standard error is undefined and returned as NaN (the mean is that value);
    with no values both are NaN. Callers print NaN as a blank / "n/a", never as 0.
    """
    xs = _clean(values)
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return float(mean), math.nan
    return float(mean), float(np.std(xs, ddof=1) / math.sqrt(len(xs)))


def bootstrap_ci(values: Iterable[float | None], confidence: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (missing values dropped).

    Returns (NaN, NaN) with fewer than two values. With the handful of seeds typical here the
    interval is optimistic (the bootstrap cannot see variance the seeds did not show); prefer
    ``mean_stderr`` for tables and use this as a second opinion.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    xs = np.asarray(_clean(values), dtype=np.float64)
    if xs.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = rng.choice(xs, size=(n_resamples, xs.size), replace=True).mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)
