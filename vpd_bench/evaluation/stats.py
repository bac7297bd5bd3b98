"""Small, dependency-light statistics for scoring and reporting.

- ``pass_at_k``: the unbiased pass@k estimator of Chen et al. (2021), "Evaluating Large Language
  Models Trained on Code", from n samples of which c are correct.
- ``avg_at_k``: the mean score of the k samples drawn for one problem (avg@k).
- ``mean_stderr``: mean and standard error of the mean over seeds.
- ``bootstrap_ci``: a percentile bootstrap confidence interval of the mean.
- ``t_quantile`` / ``t_interval``: Student's t quantile (no SciPy) and the t-interval of a mean,
  used for paired per-seed differences when only seed-level scores exist.
- ``paired_bootstrap``: the interval of a paired difference over seeds x held-out problems.
- ``cluster_bootstrap``: the interval of a pooled mean whose values come in correlated clusters
  (the responses of one problem), resampling whole clusters.
- ``min_detectable_effect``: the smallest difference of two success rates a test would detect.

Missing values (``None`` and NaN) are dropped by the aggregation helpers, so a seed that never
produced a number does not silently count as zero.
"""
from __future__ import annotations

import math
import warnings
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


# ----------------------------------------------------------------------------------------------
# intervals for paired changes and the smallest detectable difference


def _t_two_sided_cdf(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with an integer number of degrees of freedom, from the exact
    finite series in theta = atan(t / sqrt(df)) (Abramowitz & Stegun 26.7.3 / 26.7.4)."""
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        total, term = 0.0, 1.0
        if df > 1:
            total = term = 1.0
            for j in range(1, (df - 3) // 2 + 1):
                term *= c2 * (2 * j) / (2 * j + 1)
                total += term
            total *= s * math.cos(theta)
        return (2.0 / math.pi) * (theta + total)
    total = term = 1.0
    for j in range(1, (df - 2) // 2 + 1):
        term *= c2 * (2 * j - 1) / (2 * j)
        total += term
    return s * total


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` (integer >= 1) degrees of freedom, for
    0.5 <= p < 1 (e.g. ``t_quantile(0.975, 2) = 4.303``). Exact series CDF inverted by bisection,
    so no SciPy is needed."""
    if not (isinstance(df, (int, np.integer)) and df >= 1):
        raise ValueError(f"t_quantile needs an integer df >= 1, got {df!r}")
    if not 0.5 <= p < 1.0:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1, got {p}")
    target = 2.0 * p - 1.0                     # P(|T| <= t)
    lo, hi = 0.0, 1.0
    while _t_two_sided_cdf(hi, int(df)) < target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_two_sided_cdf(mid, int(df)) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_interval(values: Iterable[float | None], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the t-interval ``mean +- t_{(1+c)/2, n-1} * sd / sqrt(n)`` over the values
    present (``None`` / NaN dropped). With one value the interval is (NaN, NaN); with none all three
    are NaN. Used for paired per-seed differences when only seed-level scores exist."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    xs = _clean(values)
    mean, se = mean_stderr(xs)
    n = len(xs)
    if math.isnan(se):
        return mean, math.nan, math.nan
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * se
    return mean, mean - half, mean + half


def paired_bootstrap(diffs, confidence: float = 0.95, n_resamples: int = 4000,
                     seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high) for the mean of paired differences laid out seeds x problems.

    ``diffs[s][p]`` is, for seed s and held-out problem p, the difference of the two paired scores
    (e.g. final minus initial pass@1 of that problem, or method minus baseline); NaN marks a
    missing pair. The estimate is the mean over seeds of each seed's mean over its problems. The
    interval is a percentile bootstrap that resamples seeds and, independently, problems (a crossed
    two-way bootstrap: the held-out problems are the same for every seed, so their sampling error
    is shared across seeds and must be resampled jointly). With one seed only problems are
    resampled; with one problem only seeds. Seeds without any pair are dropped; with no pair at
    all, or a single seed x single problem, the interval is (NaN, NaN).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = np.array(diffs, dtype=np.float64)
    if d.ndim == 1:
        d = d[None, :]
    if d.ndim != 2:
        raise ValueError(f"paired_bootstrap needs a seeds x problems table, got shape {d.shape}")
    d = d[~np.all(np.isnan(d), axis=1)] if d.size else d
    if d.size == 0 or not np.any(~np.isnan(d)):
        return math.nan, math.nan, math.nan
    d = d[:, ~np.all(np.isnan(d), axis=0)]

    def seed_mean(table: np.ndarray) -> np.ndarray:
        # mean over problems per seed (ignoring NaN), then mean over seeds (ignoring seeds left empty)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_seed = np.nanmean(table, axis=-1)
            return np.nanmean(per_seed, axis=-1)

    estimate = float(seed_mean(d))
    n_seeds, n_problems = d.shape
    if n_seeds * n_problems < 2:
        return estimate, math.nan, math.nan
    rng = np.random.default_rng(seed)
    si = rng.integers(0, n_seeds, size=(n_resamples, n_seeds)) if n_seeds > 1 else np.zeros((n_resamples, 1), int)
    pi = rng.integers(0, n_problems, size=(n_resamples, n_problems)) if n_problems > 1 else np.zeros((n_resamples, 1), int)
    means = seed_mean(d[si[:, :, None], pi[:, None, :]])
    means = means[~np.isnan(means)]
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    # Rounding in the resampled means must not put a constant shift outside its own interval.
    return estimate, float(min(lo, estimate)), float(max(hi, estimate))


def cluster_bootstrap(clusters: Iterable[Iterable[float | None]], confidence: float = 0.95,
                      n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high) for the pooled mean of values that come in clusters, e.g. the pass /
    fail (1 / 0) of several responses to one problem, or their paired differences.

    The estimate weighs every value the same (total over count). The interval is a percentile
    bootstrap that resamples whole clusters with replacement, so correlation within a cluster
    widens it as it should. Missing values are dropped and empty clusters with them; with fewer than
    two clusters the interval is (NaN, NaN), with no value all three are NaN. The same ``seed``
    and the same number of clusters draw the same resamples, so intervals of paired quantities
    over the same clusters are computed on the same draws."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    kept = [xs for xs in (_clean(c) for c in clusters) if xs]
    if not kept:
        return math.nan, math.nan, math.nan
    sums = np.array([sum(xs) for xs in kept], dtype=np.float64)
    counts = np.array([len(xs) for xs in kept], dtype=np.float64)
    estimate = float(sums.sum() / counts.sum())
    if len(kept) < 2:
        return estimate, math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(kept), size=(n_resamples, len(kept)))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return estimate, float(min(lo, estimate)), float(max(hi, estimate))


def min_detectable_effect(p: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest difference between two success rates near ``p`` that a two-sided test at level
    ``alpha`` detects with probability ``power`` when each side has ``n`` independent pass/fail
    observations: ``(z_{1-alpha/2} + z_{power}) * sqrt(2 p (1 - p) / n)`` (normal approximation;
    about 2.80 * sqrt(2 p (1 - p) / n) at 5% / 80%). ``p`` is clipped to [1/n, 1 - 1/n] so that a
    score of exactly 0 or 1 does not claim that any difference is detectable. NaN when n < 1 or p
    is missing."""
    if n is None or n < 1 or p is None or math.isnan(p):
        return math.nan
    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0):
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
    from statistics import NormalDist
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0) + NormalDist().inv_cdf(power)
    p = min(max(float(p), 1.0 / n), 1.0 - 1.0 / n) if n > 1 else 0.5
    return float(z * math.sqrt(2.0 * p * (1.0 - p) / n))
