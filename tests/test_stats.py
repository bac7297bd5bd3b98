"""vpd_bench.evaluation.stats against hand-computed values."""
import math
from fractions import Fraction

import numpy as np
import pytest

from vpd_bench.evaluation.stats import avg_at_k, bootstrap_ci, mean_stderr, pass_at_k


def exact_pass_at_k(n, c, k):
    if n - c < k:
        return 1.0
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def test_pass_at_1_is_the_fraction_correct():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(10, 7, 1) == pytest.approx(0.7)


def test_pass_at_k_matches_the_binomial_formula_by_hand():
    # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # 1 - C(6,3)/C(8,3) = 1 - 20/56
    assert pass_at_k(8, 2, 3) == pytest.approx(1 - 20 / 56)


def test_pass_at_k_is_zero_without_correct_samples_and_one_when_every_draw_hits():
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0   # only 2 wrong samples: any 3 contain a correct one
    assert pass_at_k(4, 4, 4) == 1.0


def test_pass_at_k_stays_exact_for_large_n():
    for n, c, k in [(200, 37, 10), (1000, 1, 1), (1000, 3, 100), (2000, 1999, 5)]:
        assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 6), (0, 0, 1), (5, 2, 0)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_rejects_non_integers():
    with pytest.raises(TypeError):
        pass_at_k(5.0, 2, 1)


def test_avg_at_k_is_the_mean_sample_score():
    assert avg_at_k([1, 0, 1, 1]) == pytest.approx(0.75)
    assert avg_at_k([0.5, 1.0]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        avg_at_k([])


def test_mean_stderr_uses_ddof_1():
    mean, se = mean_stderr([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert se == pytest.approx(math.sqrt(5 / 3) / 2)   # std(ddof=1) = sqrt(5/3), n = 4
    mean, se = mean_stderr([0.4, 0.6])
    assert (mean, se) == (pytest.approx(0.5), pytest.approx(0.1))


def test_mean_stderr_of_one_value_has_undefined_stderr():
    mean, se = mean_stderr([0.3])
    assert mean == pytest.approx(0.3) and math.isnan(se)


def test_mean_stderr_drops_missing_values_and_handles_none_left():
    mean, se = mean_stderr([0.4, None, float("nan"), 0.6])
    assert (mean, se) == (pytest.approx(0.5), pytest.approx(0.1))
    mean, se = mean_stderr([None])
    assert math.isnan(mean) and math.isnan(se)
    mean, se = mean_stderr([])
    assert math.isnan(mean) and math.isnan(se)


def test_bootstrap_ci_brackets_the_mean_and_is_reproducible():
    values = [0.2, 0.4, 0.5, 0.7, 0.9]
    lo, hi = bootstrap_ci(values, seed=3)
    assert lo <= sum(values) / len(values) <= hi
    assert 0.2 <= lo and hi <= 0.9
    assert (lo, hi) == bootstrap_ci(values, seed=3)
    assert all(math.isnan(v) for v in bootstrap_ci([0.5]))
    with pytest.raises(ValueError):
        bootstrap_ci(values, confidence=1.5)


# ----------------------------------------------------------------------------------------------
# intervals and the smallest detectable difference

from vpd_bench.evaluation.stats import min_detectable_effect, paired_bootstrap, t_interval, t_quantile  # noqa: E402


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622),
                                         (10, 2.2281), (30, 2.0423)])
def test_t_quantile_matches_the_printed_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-5)


def test_t_quantile_other_levels_and_bad_input():
    assert t_quantile(0.95, 5) == pytest.approx(2.0150, abs=5e-5)
    assert t_quantile(0.995, 3) == pytest.approx(5.8409, abs=5e-5)
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_t_interval_by_hand():
    # mean 0.3, sd = sqrt(0.07), se = sqrt(0.07 / 3), t(0.975, 2) = 4.302653
    mean, lo, hi = t_interval([0.1, 0.2, 0.6])
    half = 4.302653 * math.sqrt(0.07 / 3)
    assert mean == pytest.approx(0.3)
    assert (lo, hi) == (pytest.approx(0.3 - half, abs=1e-6), pytest.approx(0.3 + half, abs=1e-6))
    # two values: half-width t(0.975, 1) * |a - b| / 2
    mean, lo, hi = t_interval([0.0, 0.2, None])
    assert (mean, lo, hi) == (pytest.approx(0.1), pytest.approx(0.1 - 1.270620, abs=1e-5),
                              pytest.approx(0.1 + 1.270620, abs=1e-5))
    mean, lo, hi = t_interval([0.4])
    assert mean == pytest.approx(0.4) and math.isnan(lo) and math.isnan(hi)


def test_paired_bootstrap_of_a_constant_shift_excludes_zero():
    table = [[0.25] * 10 for _ in range(3)]
    est, lo, hi = paired_bootstrap(table)
    assert (est, lo, hi) == (pytest.approx(0.25), pytest.approx(0.25), pytest.approx(0.25))
    assert lo > 0


def test_paired_bootstrap_of_a_null_shift_contains_zero():
    # each seed: half the problems gain 0.5, half lose 0.5
    table = [[0.5, -0.5] * 6 for _ in range(3)]
    est, lo, hi = paired_bootstrap(table, seed=1)
    assert est == pytest.approx(0.0, abs=1e-12)
    assert lo < 0 < hi
    assert (est, lo, hi) == paired_bootstrap(table, seed=1)


def test_paired_bootstrap_separates_a_noisy_real_shift_and_handles_missing_pairs():
    rng = np.random.default_rng(0)
    table = 0.3 + rng.normal(0.0, 0.2, size=(4, 40))
    est, lo, hi = paired_bootstrap(table)
    assert est == pytest.approx(table.mean(axis=1).mean())
    assert 0 < lo < est < hi
    # NaN cells are missing pairs; a seed without any pair is dropped
    est, lo, hi = paired_bootstrap([[1.0, float("nan"), 0.0], [float("nan")] * 3, [0.5, 0.5, float("nan")]])
    assert est == pytest.approx((0.5 + 0.5) / 2)
    assert lo <= est <= hi
    # one seed: problems are resampled; one seed x one problem: no interval
    est, lo, hi = paired_bootstrap([[0.0, 0.5, 1.0]])
    assert est == pytest.approx(0.5) and lo < 0.5 < hi
    est, lo, hi = paired_bootstrap([[0.3]])
    assert est == pytest.approx(0.3) and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in paired_bootstrap([[float("nan")]]))


def test_min_detectable_effect_by_hand():
    z = 1.959964 + 0.841621
    assert min_detectable_effect(0.25, 48) == pytest.approx(z * math.sqrt(2 * 0.25 * 0.75 / 48), rel=1e-5)
    assert min_detectable_effect(0.5, 100) == pytest.approx(0.198102, abs=1e-5)
    # halving the noise takes four times the observations
    assert min_detectable_effect(0.3, 400) == pytest.approx(min_detectable_effect(0.3, 100) / 2)
    # a score of 0 is clipped to 1/n rather than claiming every difference is detectable
    assert min_detectable_effect(0.0, 50) == pytest.approx(z * math.sqrt(2 * (1 / 50) * (49 / 50) / 50), rel=1e-5)
    assert math.isnan(min_detectable_effect(0.3, 0)) and math.isnan(min_detectable_effect(float("nan"), 10))
