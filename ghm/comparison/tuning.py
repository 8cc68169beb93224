"""A tuned comparison's record of how fair it was: each arm's search, best setting, tuning curve and warnings.

The tuned protocol (``hydra.sweeper.arms``) treats what an arm is (its overrides, e.g. ``loss=ghm``)
as the scientific choice and everything searched as nuisance, optimised separately for each arm
with the same sampler and budget (Google's Deep Learning Tuning Playbook). Each of an arm's search
trials runs once per tuning seed; its value is the mean over them. Pure functions of the sweep's
:class:`~ghm.comparison.record.TrialRecord` s: which arm and search trial a job belongs to is on the record.

Two warnings say when the search, not the method, may have decided the verdict: an arm's best at
the edge of a searched range (widen it), and a tuning curve (best so far against trial number)
still rising in the last third of the budget (too small a budget).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import FloatDistribution, IntDistribution, json_to_distribution

from ghm.comparison.record import FAILED, FINISHED, PRUNED, REUSED, TrialRecord

EDGE = 0.05  # a best value within this share of a range's width (on its scale: log for log ranges) of an end is at the edge


@dataclass
class SearchTrial:
    """One trial of an arm's search: its nuisance values, run on every tuning seed; its value is their mean."""

    number: int  # the trial's number in the arm's Optuna study (the order it was asked for)
    params: dict[str, Any]  # the searched values
    state: str  # finished (every seed finished), failed (a seed failed), pruned (else)
    values: dict[int, float]  # tuning seed -> final objective, for the seeds that finished
    mean: float | None  # over the tuning seeds, when every one finished


@dataclass
class ArmTuning:
    """One arm of a tuned comparison: what it is, what was searched with which budget, and what the search found."""

    name: str
    overrides: list[str]
    budget: int  # search trials (each on every tuning seed); pruned and failed ones count
    seeds: list[int]  # the tuning seeds
    space: dict[str, Any]  # the searched distributions (Optuna's JSON), by key
    trials: list[SearchTrial] = field(default_factory=list)
    best: dict[str, Any] | None = None  # the best trial's searched values
    best_value: float | None = None
    curve: list[float | None] = field(default_factory=list)  # best mean so far after each search trial (None before any)
    warnings: list[str] = field(default_factory=list)
    condition: dict[str, Any] = field(default_factory=dict)  # the command line's values it was searched in, when the sweep lists some

    @property
    def label(self) -> str:
        """The arm and its condition, e.g. ``ghm train.epochs=14``."""
        return " ".join([self.name, *(f"{k}={v}" for k, v in self.condition.items())])

    @property
    def counts(self) -> dict[str, int]:
        return {state: sum(t.state == state for t in self.trials) for state in (FINISHED, PRUNED, FAILED)}

    def line(self) -> str:
        """The closing table's line for this arm, e.g. ``ghm: budget 16 trials x 2 seeds (12 finished, 4 pruned); best ...``."""
        counts = ", ".join(f"{n} {state}" for state, n in self.counts.items() if n)
        best = (f"best {self.best_value:.4f}: " + " ".join(f"{k}={_short(v)}" for k, v in (self.best or {}).items())
                if self.best is not None else "no search trial finished on every tuning seed")
        return f"{self.label} ({' '.join(self.overrides)}): budget {self.budget} trials x {len(self.seeds)} seeds ({counts}); {best}"


def summarize_arm(name: str, overrides: Sequence[str], budget: int, seeds: Sequence[int], space: Mapping[str, Any],
                  trials: Sequence[TrialRecord], direction: str = "maximize", condition: Mapping[str, Any] | None = None) -> ArmTuning:
    """An arm's tuning (in ``condition``) from the records of its search's jobs, one per search trial and tuning seed."""
    condition = dict(condition or {})
    grouped: dict[int, list[TrialRecord]] = {}
    for trial in trials:
        if trial.arm == name and trial.search_trial is not None and trial.condition == condition:
            grouped.setdefault(trial.search_trial, []).append(trial)
    search = [_search_trial(number, jobs, seeds, space) for number, jobs in sorted(grouped.items())]
    arm = ArmTuning(name=name, overrides=list(overrides), budget=budget, seeds=list(seeds), space=dict(space), trials=search,
                    condition=condition)
    sign = 1 if direction == "maximize" else -1
    best: SearchTrial | None = None
    for trial in search:
        if trial.mean is not None and (best is None or sign * trial.mean > sign * best.mean):
            best = trial
        arm.curve.append(best.mean if best else None)
    if best is not None:
        arm.best, arm.best_value = dict(best.params), best.mean
        arm.warnings = edge_warnings(arm.label, best.params, space) + rising_warnings(arm.label, arm.curve, budget, sign)
    return arm


def _search_trial(number: int, jobs: Sequence[TrialRecord], seeds: Sequence[int], space: Mapping[str, Any]) -> SearchTrial:
    values = {j.seed: j.objective for j in jobs if j.state in (FINISHED, REUSED) and j.objective is not None and j.seed is not None}
    if any(j.state == FAILED for j in jobs):
        state = FAILED
    elif set(seeds) <= set(values):
        state = FINISHED
    else:
        state = PRUNED  # stopped early on some seed (ASHA), or a seed never ran
    params = {k: v for k, v in jobs[0].params.items() if k in space}
    mean = statistics.fmean(values[s] for s in seeds) if state == FINISHED else None
    return SearchTrial(number=number, params=params, state=state, values=values, mean=mean)


def edge_warnings(arm: str, best: Mapping[str, Any], space: Mapping[str, Any]) -> list[str]:
    """One warning per numeric searched parameter whose best value lies at the edge of its range."""
    warnings = []
    for key, encoded in space.items():
        if key not in best:
            continue
        distribution = json_to_distribution(json.dumps(encoded))
        if not isinstance(distribution, FloatDistribution | IntDistribution):
            continue  # a categorical choice has no edge
        low, high, value = float(distribution.low), float(distribution.high), float(best[key])
        if high <= low:
            continue
        scale = math.log if distribution.log else (lambda x: x)
        position = (scale(value) - scale(low)) / (scale(high) - scale(low))
        if position <= EDGE or position >= 1 - EDGE:
            end = "lower" if position <= EDGE else "upper"
            warnings.append(f"WARNING: {arm}'s best {key}={_short(value)} lies at the {end} edge of its range "
                            f"[{_short(low)}, {_short(high)}]: the range decided, not the method; widen it")
    return warnings


def rising_warnings(arm: str, curve: Sequence[float | None], budget: int, sign: int = 1) -> list[str]:
    """A warning when the best so far still improved in the last third of the budget (the budget was too small)."""
    if not curve:
        return []
    cut = budget - math.ceil(budget / 3)  # the trials after the first two thirds
    before = next((v for v in reversed(curve[:cut]) if v is not None), None)
    final = curve[-1]
    if final is None or (before is not None and sign * final <= sign * before):
        return []
    gained = "" if before is None else f" (by {sign * (final - before):+.4f})"
    return [f"WARNING: {arm}'s tuning curve still rises in the last third of its budget{gained}, trials {cut + 1}-{budget}: "
            "the budget may be too small for the verdict"]


def confirmation_seeds(tuning_seeds: Sequence[int], count: int) -> list[int]:
    """``count`` fresh seeds, after every tuning seed: the best of a search is confirmed on seeds it was not chosen on."""
    start = max(tuning_seeds) + 1 if tuning_seeds else 0
    return list(range(start, start + count))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
