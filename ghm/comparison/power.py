"""What a paired comparison's seeds can resolve, and how to add seeds without inflating its error rate.

* :func:`minimum_detectable_difference`: the smallest true mean difference a two-sided paired t test
  on ``n`` seeds detects with 80% power, given the paired differences' standard deviation (the
  noncentral t distribution, exactly: ``scipy.stats.nct``).
* :func:`seeds_needed`: the fewest seeds whose power at a stated difference of interest reaches 80%.
* :func:`probability_of_improvement`: P(candidate > baseline) over the paired seeds (ties count
  half) with its Wilson score interval, the scale-free summary ``rliable`` and Bouthillier et al.
  recommend beside the mean difference.
* :class:`SequentialPlan`: adding seeds in batches until the interval excludes 0 ("peeking") inflates
  the false-positive rate unless the looks are planned: a maximum number of seeds fixed in advance
  and the error rate spent over the looks (Pocock: one stricter level at every look; O'Brien-Fleming:
  very strict early, near the nominal level at the last; Bonferroni: alpha / looks). The group-sequential
  boundaries keep the classical shapes over the looks' information fractions and are calibrated for
  the paired t statistic at the looks' numbers of seeds (whose tails are heavier than the normal's),
  by simulation under no difference.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import optimize, stats

POWER = 0.8
ALPHA = 0.05
BOUNDARIES = ("pocock", "obrien_fleming", "bonferroni")
MAX_SEEDS = 100_000  # where seeds_needed stops looking
CALIBRATION_SEQUENCES = 200_000  # simulated null sequences that calibrate a sequential plan's levels for the t statistic


def power(difference: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t test at level ``alpha`` with ``n`` pairs, for a true mean ``difference``."""
    if n < 2:
        return math.nan
    if sd == 0:
        return 1.0 if difference != 0 else alpha
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = abs(difference) * math.sqrt(n) / sd
    opposite = stats.nct.cdf(-critical, df, shift)  # the wrong-sign rejections: negligible but for tiny shifts
    return float(stats.nct.sf(critical, df, shift) + (0.0 if math.isnan(opposite) else opposite))  # SciPy's far tail can be NaN


def minimum_detectable_difference(sd: float, n: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """The true difference that ``n`` paired seeds detect with power ``target`` (NaN below 2 seeds; 0 when sd is 0)."""
    if n < 2 or math.isnan(sd):
        return math.nan
    if sd == 0:
        return 0.0
    high = sd
    while power(high, sd, n, alpha) < target:
        high *= 2
    return float(optimize.brentq(lambda d: power(d, sd, n, alpha) - target, 0.0, high, xtol=1e-12 * sd))


def seeds_needed(difference: float, sd: float, alpha: float = ALPHA, target: float = POWER) -> int | None:
    """The fewest paired seeds (>= 2) whose power at ``difference`` reaches ``target``; None past :data:`MAX_SEEDS`."""
    if math.isnan(sd) or difference == 0:
        return None
    if sd == 0:
        return 2
    low, high = 2, 2
    while power(difference, sd, high, alpha) < target:
        low, high = high, high * 2
        if high > MAX_SEEDS:
            return None
    while low < high:  # power rises with n: the first n reaching the target
        middle = (low + high) // 2
        low, high = (middle + 1, high) if power(difference, sd, middle, alpha) < target else (low, middle)
    return low


@dataclass(frozen=True)
class Improvement:
    """P(candidate > baseline) over paired seeds and its 95% Wilson interval."""

    probability: float
    low: float
    high: float


def probability_of_improvement(differences: Sequence[float], larger_is_better: bool = True, confidence: float = 0.95) -> Improvement:
    """The share of seeds on which the candidate beats its baseline (a tie counts half), with a Wilson score interval."""
    d = np.asarray(differences, dtype=float) * (1 if larger_is_better else -1)
    n = d.size
    if n == 0:
        return Improvement(math.nan, math.nan, math.nan)
    p = float(((d > 0).sum() + 0.5 * (d == 0).sum()) / n)
    z = stats.norm.ppf((1 + confidence) / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Improvement(p, float(max(0.0, centre - half)), float(min(1.0, centre + half)))


@dataclass(frozen=True)
class SequentialPlan:
    """Looks at ``seeds[k]`` paired seeds (increasing, the last one the maximum fixed in advance), spending ``alpha``."""

    seeds: tuple[int, ...]
    boundary: str = "pocock"
    alpha: float = ALPHA

    def __post_init__(self) -> None:
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {', '.join(BOUNDARIES)}, got {self.boundary!r}")
        if not self.seeds or any(b <= a for a, b in itertools.pairwise(self.seeds)) or self.seeds[0] < 2:
            raise ValueError(f"a sequential plan's looks must be increasing numbers of seeds >= 2, got {list(self.seeds)}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")

    @classmethod
    def batches(cls, first: int, batch: int, maximum: int, boundary: str = "pocock", alpha: float = ALPHA) -> SequentialPlan:
        """Looks after ``first`` seeds, then every ``batch`` more, up to ``maximum`` (the last look may be a smaller batch)."""
        if batch < 1 or maximum < first:
            raise ValueError(f"sequential looks need batch >= 1 and a maximum >= the first look ({first}), got {batch} and {maximum}")
        looks = list(range(first, maximum + 1, batch))
        if looks[-1] != maximum:
            looks.append(maximum)
        return cls(tuple(looks), boundary, alpha)

    def shape(self) -> np.ndarray:
        """The boundaries' shape over the looks on the z scale: flat (Pocock), or falling as 1 / sqrt(information) (O'Brien-Fleming)."""
        fractions = np.asarray(self.seeds, dtype=float) / self.seeds[-1]
        return np.ones(len(self.seeds)) if self.boundary != "obrien_fleming" else 1 / np.sqrt(fractions)

    @cached_property
    def levels(self) -> tuple[float, ...]:
        """The nominal two-sided level of each look: the paired t test at look k rejects when its p-value is below it.

        Bonferroni's are ``alpha / looks``. Pocock's and O'Brien-Fleming's keep the shape of their z boundaries but are
        calibrated for the paired t statistic itself, whose tails at a few seeds are heavier than the normal's: by
        :data:`CALIBRATION_SEQUENCES` simulated sequences of normal differences under no difference (seeded, so the
        plan is deterministic; the t statistics do not depend on the differences' scale), so that the share of
        sequences crossing at some look is ``alpha``.
        """
        k = len(self.seeds)
        if self.boundary == "bonferroni" or k == 1:
            return (self.alpha / k,) * k
        statistics = np.abs(_null_t_statistics(self.seeds))
        df = np.asarray(self.seeds) - 1
        shape = self.shape()

        def crossing(scale: float) -> float:  # share of sequences crossing a boundary at some look
            return float((statistics > stats.t.isf(stats.norm.sf(shape * scale), df)).any(axis=1).mean())

        low, high = 0.5, 8.0
        for _ in range(40):  # bisection on the boundaries' height: crossing() falls as it rises
            middle = (low + high) / 2
            low, high = (middle, high) if crossing(middle) > self.alpha else (low, middle)
        return tuple(float(2 * stats.norm.sf(b)) for b in shape * high)

    def level_at(self, seeds: int) -> float:
        """The nominal level of the look at ``seeds`` seeds."""
        if seeds not in self.seeds:
            raise ValueError(f"{seeds} seeds is no planned look ({list(self.seeds)})")
        return self.levels[self.seeds.index(seeds)]

    def describe(self) -> str:
        """How the report states the correction: the rule, the planned looks and each look's nominal level."""
        name = {"pocock": "Pocock", "obrien_fleming": "O'Brien-Fleming", "bonferroni": "Bonferroni"}[self.boundary]
        levels = ", ".join(f"{level:.4g}" for level in self.levels)
        return (f"{name} over {len(self.seeds)} planned looks at {', '.join(map(str, self.seeds))} seeds "
                f"(overall two-sided level {self.alpha}): nominal level per look {levels}")


def sequential_decision(differences: Sequence[float], plan: SequentialPlan) -> tuple[bool, float]:
    """Whether the look at ``len(differences)`` seeds stops (its paired t test rejects at the look's level), and that level."""
    d = np.asarray(differences, dtype=float)
    level = plan.level_at(d.size)
    sd = d.std(ddof=1)
    if sd == 0:
        return bool(d.mean() != 0), level
    p_value = 2 * stats.t.sf(abs(d.mean()) / (sd / math.sqrt(d.size)), d.size - 1)
    return bool(p_value < level), level


def _null_t_statistics(looks: Sequence[int], sequences: int = CALIBRATION_SEQUENCES, seed: int = 0) -> np.ndarray:
    """Paired t statistics at each look of ``sequences`` simulated sequences of standard normal differences: [sequences, looks].

    Drawn batch by batch, exactly: the m differences between two looks add N(0, m) to the sum and
    ``sum^2 / m + chi2(m - 1)`` to the sum of squares, so memory does not grow with the number of seeds.
    """
    rng = np.random.default_rng(seed)
    total = squares = np.zeros(sequences)
    previous, columns = 0, []
    for n in looks:
        m = n - previous
        batch = rng.normal(0.0, math.sqrt(m), sequences)
        total = total + batch
        squares = squares + batch * batch / m + (rng.chisquare(m - 1, sequences) if m > 1 else 0.0)
        mean = total / n
        columns.append(mean / np.sqrt((squares - n * mean * mean) / (n - 1) / n))
        previous = n
    return np.stack(columns, axis=1)
