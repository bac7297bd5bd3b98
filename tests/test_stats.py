"""vpd_bench.stats against hand-computed values."""
import math
from fractions import Fraction

import pytest

from vpd_bench.stats import avg_at_k, bootstrap_ci, mean_stderr, pass_at_k


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
