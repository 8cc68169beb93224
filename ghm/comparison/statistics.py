"""Paired comparison of a setting against its baseline: per-seed differences, their mean and 95% intervals.

Runs that share everything but the loss (data, model, schedule, seed, code version) form a pair;
the difference of their objective (mAP) removes the variance the seed puts into both, so a few
seeds can show what many unpaired runs cannot. Two intervals are given: the paired t interval
(exact for normally distributed differences) and a percentile bootstrap (no such assumption, but
coarse for few seeds). Beside them, what the seeds could resolve (:mod:`ghm.comparison.power`): the
smallest difference detected with 80% power, the seeds a stated difference of interest needs, and
the probability of improvement over the paired seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ghm.comparison.power import minimum_detectable_difference, probability_of_improvement, seeds_needed


@dataclass(frozen=True)
class PairedComparison:
    """``setting`` minus the baseline over the seeds both have."""

    setting: str
    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    candidate_mean: float
    baseline_mean: float
    mean: float
    t_low: float  # paired t 95% interval (NaN with fewer than 2 pairs)
    t_high: float
    boot_low: float  # percentile bootstrap 95% interval
    boot_high: float
    confidence: float = 0.95  # of the t interval (a sequential confirmation's last look has its own, stricter level)
    sd: float = math.nan  # of the paired differences
    mde: float = math.nan  # the smallest true difference these seeds detect with 80% power (two-sided, level 1 - confidence)
    effect: float | None = None  # the difference of interest the sweep states (hydra.sweeper.effect_of_interest)
    seeds_needed: int | None = None  # paired seeds that detect ``effect`` with 80% power, at the observed sd
    p_improve: float = math.nan  # P(setting beats the baseline) over the paired seeds (ties half), with its 95% Wilson interval
    p_improve_low: float = math.nan
    p_improve_high: float = math.nan

    @property
    def n(self) -> int:
        return len(self.differences)


def paired_t_interval(differences: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """mean +- t_{(1+c)/2, n-1} * sd / sqrt(n); NaN for fewer than two differences."""
    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return math.nan, math.nan
    half = stats.t.ppf((1 + confidence) / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return float(d.mean() - half), float(d.mean() + half)


def bootstrap_interval(differences: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean over ``resamples`` resamplings with replacement (seeded)."""
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return math.nan, math.nan
    means = d[np.random.default_rng(seed).integers(0, d.size, (resamples, d.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def compare(setting: str, candidate: Mapping[int, float], baseline: Mapping[int, float], confidence: float = 0.95,
            larger_is_better: bool = True, effect: float | None = None) -> PairedComparison:
    """Pair ``candidate`` and ``baseline`` objectives by seed (seeds without a partner are left out)."""
    seeds = tuple(sorted(set(candidate) & set(baseline)))
    if not seeds:
        raise ValueError(f"{setting}: no seed has both a candidate and a baseline run")
    differences = tuple(candidate[s] - baseline[s] for s in seeds)
    t_low, t_high = paired_t_interval(differences, confidence)
    boot_low, boot_high = bootstrap_interval(differences, confidence)
    sd = float(np.std(differences, ddof=1)) if len(differences) > 1 else math.nan
    improvement = probability_of_improvement(differences, larger_is_better)
    return PairedComparison(
        setting=setting, seeds=seeds, differences=differences,
        candidate_mean=float(np.mean([candidate[s] for s in seeds])), baseline_mean=float(np.mean([baseline[s] for s in seeds])),
        mean=float(np.mean(differences)), t_low=t_low, t_high=t_high, boot_low=boot_low, boot_high=boot_high,
        confidence=confidence, sd=sd, mde=minimum_detectable_difference(sd, len(differences), alpha=1 - confidence),
        effect=effect, seeds_needed=seeds_needed(effect, sd, alpha=1 - confidence) if effect else None,
        p_improve=improvement.probability, p_improve_low=improvement.low, p_improve_high=improvement.high,
    )


def format_table(comparisons: Sequence[PairedComparison], metric: str = "mAP") -> str:
    """A plain-text table, best mean difference first: the difference, its intervals, P(better) and what the seeds resolve.

    ``MDE80`` is the smallest true difference the seeds detect with 80% power at the observed sd; with a
    stated difference of interest, ``seeds@d`` is how many paired seeds detect it with 80% power.
    """
    effect = next((c.effect for c in comparisons if c.effect), None)
    level = {f"{c.confidence:.3g}" for c in comparisons}
    name = f"{float(level.pop()) * 100:.3g}% t interval" if len(level) == 1 else "t interval"
    header = (f"{'setting':40s} {'n':>3s} {metric:>8s} {'baseline':>8s} {'diff':>8s} {name:>21s} {'95% bootstrap':>21s} "
              f"{'P(better)':>18s} {'MDE80':>7s}" + (f" {'seeds@' + f'{effect:g}':>10s}" if effect else ""))
    lines = [header, "-" * len(header)]
    for c in sorted(comparisons, key=lambda c: c.mean, reverse=True):
        needed = "" if not effect else f" {c.seeds_needed if c.seeds_needed is not None else 'n/a':>10}"
        lines.append(f"{c.setting[:40]:40s} {c.n:3d} {c.candidate_mean:8.4f} {c.baseline_mean:8.4f} {c.mean:+8.4f} "
                     f"[{c.t_low:+8.4f}, {c.t_high:+8.4f}] [{c.boot_low:+8.4f}, {c.boot_high:+8.4f}] "
                     f"{c.p_improve:4.2f} [{c.p_improve_low:4.2f}, {c.p_improve_high:4.2f}] {c.mde:7.4f}{needed}")
    return "\n".join(lines)
