"""What a verdict's seeds can resolve, checked against independent calculations: statsmodels' power of the t test,
simulations of the paired t test, the published group-sequential constants and the Wilson interval's textbook values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower

from ghm.comparison.power import (
    BOUNDARIES,
    SequentialPlan,
    minimum_detectable_difference,
    power,
    probability_of_improvement,
    seeds_needed,
    sequential_decision,
)
from ghm.comparison.statistics import compare


@pytest.mark.parametrize(("sd", "n"), [(0.01, 3), (0.0085, 5), (0.02, 10), (1.0, 2)])
def test_the_minimum_detectable_difference_has_80_percent_power_by_statsmodels(sd: float, n: int) -> None:
    mde = minimum_detectable_difference(sd, n)
    effect = TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8, alternative="two-sided")  # in units of sd
    assert mde == pytest.approx(effect * sd, rel=1e-4)
    if n > 2:  # statsmodels' own noncentral t gives NaN at one degree of freedom
        assert TTestPower().power(effect_size=mde / sd, nobs=n, alpha=0.05) == pytest.approx(0.8, abs=1e-4)


def test_power_agrees_with_a_simulated_paired_t_test() -> None:
    rng = np.random.default_rng(3)
    d, sd, n = 0.01, 0.012, 6
    samples = rng.normal(d, sd, (40_000, n))
    t = samples.mean(axis=1) / (samples.std(axis=1, ddof=1) / math.sqrt(n))
    rejected = (2 * stats.t.sf(np.abs(t), n - 1) < 0.05).mean()
    assert power(d, sd, n) == pytest.approx(rejected, abs=3 * math.sqrt(0.25 / 40_000))


def test_seeds_needed_is_the_first_n_reaching_80_percent() -> None:
    for d, sd in ((0.014, 0.0085), (0.014, 0.03), (0.05, 0.01)):
        n = seeds_needed(d, sd)
        assert n is not None and power(d, sd, n) >= 0.8 and (n == 2 or power(d, sd, n - 1) < 0.8)
        reference = TTestPower().solve_power(effect_size=d / sd, alpha=0.05, power=0.8, alternative="two-sided")
        assert n == max(2, math.ceil(reference - 1e-9))
    assert seeds_needed(0.014, 0.0) == 2 and seeds_needed(0.0, 0.01) is None and seeds_needed(1e-9, 1.0) is None


def test_the_probability_of_improvement_counts_ties_half_with_a_wilson_interval() -> None:
    improvement = probability_of_improvement([0.1, 0.2, -0.1, 0.0])
    assert improvement.probability == pytest.approx(2.5 / 4)
    # Wilson's score interval for 0 successes in 5 (a textbook value: [0, 0.4345])
    none = probability_of_improvement([-0.1] * 5)
    assert none.probability == 0 and none.low == 0 and none.high == pytest.approx(0.4345, abs=1e-4)
    assert probability_of_improvement([-0.1] * 5, larger_is_better=False).probability == 1  # a loss: lower is better


def test_every_comparison_says_what_its_seeds_resolve() -> None:
    candidate, baseline = {0: 0.020, 1: 0.021, 2: 0.018}, {0: 0.340, 1: 0.337, 2: 0.353}
    result = compare("loss=ghm", candidate, baseline, effect=0.014)
    differences = [candidate[s] - baseline[s] for s in range(3)]
    assert result.sd == pytest.approx(np.std(differences, ddof=1))
    assert result.mde == pytest.approx(minimum_detectable_difference(result.sd, 3))
    assert result.seeds_needed == seeds_needed(0.014, result.sd) and result.p_improve == 0.0
    assert compare("x", {0: 1.0}, {0: 0.5}).seeds_needed is None and math.isnan(compare("x", {0: 1.0}, {0: 0.5}).mde)


def test_group_sequential_boundaries_match_the_published_constants_at_large_samples() -> None:
    """With many seeds per look the t statistic is normal: Pocock's 2.178 (2 looks) and 2.413 (5), O'Brien-Fleming's 5 looks."""
    def z(plan: SequentialPlan) -> list[float]:
        return [float(stats.norm.isf(level / 2)) for level in plan.levels]

    assert z(SequentialPlan((400, 800))) == pytest.approx([2.178] * 2, abs=0.01)
    assert z(SequentialPlan((200, 400, 600, 800, 1000))) == pytest.approx([2.413] * 5, abs=0.01)
    assert z(SequentialPlan((200, 400, 600, 800, 1000), "obrien_fleming")) == pytest.approx([4.562, 3.226, 2.634, 2.281, 2.040], abs=0.015)
    assert SequentialPlan((3, 6, 9), "bonferroni").levels == pytest.approx([0.05 / 3] * 3)


@pytest.mark.parametrize("looks", [(3, 6, 9, 12), (2, 4, 6, 8, 10), (5, 8)])
def test_the_sequential_rule_keeps_its_error_rate_under_no_difference(looks: tuple[int, ...]) -> None:
    """Simulated under no difference (a seed of its own, not the calibration's): peeking at every look at 0.05 rejects far
    too often; each planned rule rejects at its level, up to Monte Carlo error (Bonferroni below it)."""
    rng = np.random.default_rng(11)
    sequences = 20_000
    differences = rng.normal(0.0, 0.01, (sequences, looks[-1]))
    tolerance = 3 * math.sqrt(0.05 * 0.95 / sequences)

    def rejection_rate(plan: SequentialPlan) -> float:
        return float(np.mean([any(sequential_decision(row[:n], plan)[0] for n in looks) for row in differences[:4000]]))

    def rate(levels: tuple[float, ...]) -> float:
        rejected = np.zeros(sequences, dtype=bool)
        for n, level in zip(looks, levels, strict=True):
            d = differences[:, :n]
            t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
            rejected |= 2 * stats.t.sf(np.abs(t), n - 1) < level
        return float(rejected.mean())

    assert rate((0.05,) * len(looks)) > 0.05 + 5 * tolerance  # uncorrected peeking
    for boundary in BOUNDARIES:
        plan = SequentialPlan(looks, boundary)
        if boundary == "bonferroni":
            assert rate(plan.levels) <= 0.05 + tolerance
        else:
            assert rate(plan.levels) == pytest.approx(0.05, abs=tolerance)
    pocock = SequentialPlan(looks, "pocock")
    assert rejection_rate(pocock) == pytest.approx(rate(pocock.levels[:1] * len(looks)), abs=0.02)  # the decision function agrees


def test_a_plan_is_checked_and_described() -> None:
    plan = SequentialPlan.batches(5, 5, 17, "obrien_fleming")
    assert plan.seeds == (5, 10, 15, 17)
    levels = plan.levels
    assert all(a < b for a, b in itertools.pairwise(levels))  # strict early, near alpha at the end
    assert "O'Brien-Fleming over 4 planned looks at 5, 10, 15, 17 seeds" in plan.describe()
    with pytest.raises(ValueError, match="boundary must be one of"):
        SequentialPlan((3, 6), "peek")
    with pytest.raises(ValueError, match="increasing numbers of seeds"):
        SequentialPlan((6, 3))
    with pytest.raises(ValueError, match="no planned look"):
        plan.level_at(7)
