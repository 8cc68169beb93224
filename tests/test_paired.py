"""Paired statistics against calculations done by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ghm.comparison.statistics import bootstrap_interval, compare, format_table, paired_t_interval


def test_paired_t_interval_by_hand() -> None:
    # differences 0.02, 0.01, 0.03: mean 0.02, sd 0.01, se 0.01 / sqrt(3) = 0.0057735,
    # t(0.975, 2) = 4.302653 -> half-width 0.0248414.
    low, high = paired_t_interval([0.02, 0.01, 0.03])
    assert low == pytest.approx(0.02 - 0.0248414, abs=1e-6)
    assert high == pytest.approx(0.02 + 0.0248414, abs=1e-6)


def test_paired_t_interval_needs_two_pairs() -> None:
    assert all(math.isnan(v) for v in paired_t_interval([0.05]))


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution() -> None:
    # With 3 differences the bootstrap has 27 equally likely resamples; their means' 2.5% and
    # 97.5% quantiles are 0.01 and 0.03 (each extreme has probability 1/27 > 2.5%).
    d = [0.02, 0.01, 0.03]
    exact = sorted(np.mean(r) for r in itertools.product(d, repeat=3))
    assert exact[0] == pytest.approx(0.01) and exact[-1] == pytest.approx(0.03)
    low, high = bootstrap_interval(d)
    assert low == pytest.approx(0.01, abs=1e-9) and high == pytest.approx(0.03, abs=1e-9)
    assert bootstrap_interval(d, seed=1) == bootstrap_interval(d, seed=1)  # seeded


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
