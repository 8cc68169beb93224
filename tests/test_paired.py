"""Paired statistics against calculations done by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ghm.comparison.statistics import bootstrap_interval, compare, format_table, paired_t_interval


def test_paired_t_interval_by_hand() -> None:
    # differences 0.02, 0.01, 0.03: mean 0.02, sd 0.01, se 0.01 / sqrt(3) = 0.0057735,
    # t(0.975, 2) = 4.302653 -> half-width 0.0248414.
    low, high = paired_t_interval([0.02, 0.01, 0.03])
    assert low == pytest.approx(0.02 - 0.0248414, abs=1e-6)
    assert high == pytest.approx(0.02 + 0.0248414, abs=1e-6)


def test_paired_t_interval_needs_two_pairs() -> None:
    assert all(math.isnan(v) for v in paired_t_interval([0.05]))


# Ten per-seed mAPs of a candidate and its baseline: non-degenerate, skewed differences.
CANDIDATE = [0.412, 0.398, 0.431, 0.405, 0.377, 0.446, 0.419, 0.388, 0.402, 0.428]
BASELINE = [0.401, 0.399, 0.402, 0.396, 0.381, 0.409, 0.404, 0.385, 0.398, 0.411]


def test_paired_t_interval_agrees_with_scipys_paired_t_test() -> None:
    low, high = paired_t_interval(np.subtract(CANDIDATE, BASELINE))
    reference = stats.ttest_rel(CANDIDATE, BASELINE).confidence_interval(confidence_level=0.95)
    assert (low, high) == pytest.approx((reference.low, reference.high), rel=1e-12)


def test_bootstrap_interval_agrees_with_scipys_percentile_bootstrap() -> None:
    differences = np.subtract(CANDIDATE, BASELINE)
    low, high = bootstrap_interval(differences)
    reference = stats.bootstrap((differences,), np.mean, confidence_level=0.95, n_resamples=10_000, method="percentile",
                                random_state=np.random.default_rng(1)).confidence_interval
    standard_error = differences.std(ddof=1) / math.sqrt(differences.size)
    # Two independent 10,000-resample estimates of the same quantiles: equal up to Monte Carlo error (~2% of a standard error).
    assert low == pytest.approx(reference.low, abs=0.1 * standard_error)
    assert high == pytest.approx(reference.high, abs=0.1 * standard_error)
    assert high - low > 2 * standard_error  # a real interval, not the sample's min and max
    assert low > differences.min() and high < differences.max()
    assert bootstrap_interval(differences, seed=1) == bootstrap_interval(differences, seed=1)  # seeded


def test_compare_pairs_by_seed_and_ignores_unpaired_seeds() -> None:
    candidate = {0: 0.40, 1: 0.35, 2: 0.38, 7: 0.99}
    baseline = {0: 0.38, 1: 0.34, 2: 0.35, 5: 0.10}
    result = compare("loss=ghm", candidate, baseline)
    assert result.seeds == (0, 1, 2) and result.n == 3
    assert result.differences == pytest.approx((0.02, 0.01, 0.03))
    assert result.mean == pytest.approx(0.02)
    assert result.candidate_mean == pytest.approx((0.40 + 0.35 + 0.38) / 3)
    assert result.baseline_mean == pytest.approx((0.38 + 0.34 + 0.35) / 3)
    assert (result.t_low, result.t_high) == pytest.approx((0.02 - 0.0248414, 0.02 + 0.0248414), abs=1e-6)
    with pytest.raises(ValueError, match="no seed has both"):
        compare("loss=ghm", {0: 0.1}, {1: 0.2})


def test_table_lists_best_first() -> None:
    good = compare("loss=ghm loss.cls.bins=20", {0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.45})
    bad = compare("loss=ghm loss.cls.bins=5", {0: 0.3, 1: 0.35}, {0: 0.4, 1: 0.45})
    table = format_table([bad, good]).splitlines()
    assert "bins=20" in table[2] and "bins=5" in table[3] and "+0.1250" in table[2]
