"""From trials to settings: each setting against the baseline, seed by seed, and the best setting.

Pure functions of a sweep's :class:`~ghm.comparison.record.TrialRecord` s and its
:class:`~ghm.comparison.pairing.Pairing`: the engine ranks and confirms with them, the dashboard
shows what they give.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ghm.comparison.pairing import Pairing
from ghm.comparison.record import FINISHED, REUSED, TrialRecord
from ghm.comparison.statistics import PairedComparison, compare


def setting_of(trial: TrialRecord, pairing: Pairing) -> str:
    """What a trial tries: a tuned comparison's confirmation job by its arm (``ghm (tuned)``: its best settings are in the
    arm's tuning), any other trial by its swept values but the pairing key. Trials with one label are seeds of one setting."""
    if trial.arm is not None and trial.search_trial is None:
        return f"{trial.arm} (tuned)"
    return pairing.setting_label(trial.params)


def compare_settings(trials: Sequence[TrialRecord], pairing: Pairing, direction: str = "maximize", effect: float | None = None,
                     confidence: float = 0.95) -> list[PairedComparison]:
    """Each setting (the swept values but the pairing key) against the baseline, on the seeds both finished.

    ``effect``: a difference of interest, whose seeds needed each comparison gives; ``confidence``: of its t interval.
    """
    baseline = {t.seed: t.objective for t in trials
                if t.baseline and t.objective is not None and t.state in (FINISHED, REUSED) and t.search_trial is None}
    if not baseline:
        return []
    settings: dict[str, dict[int, float]] = {}
    for t in trials:
        if t.baseline or t.objective is None or t.state not in (FINISHED, REUSED) or t.seed is None or t.search_trial is not None:
            continue
        settings.setdefault(setting_of(t, pairing), {})[t.seed] = t.objective
    return [compare(label, values, baseline, confidence, larger_is_better=direction == "maximize", effect=effect)
            for label, values in settings.items() if set(values) & set(baseline)]


def best_params(trials: Sequence[TrialRecord], comparisons: Sequence[PairedComparison], pairing: Pairing,
                direction: str) -> dict[str, Any] | None:
    """The best setting's swept values: by mean paired difference where there is one, else by objective."""
    sign = 1 if direction == "maximize" else -1
    if comparisons:
        best = max(comparisons, key=lambda c: sign * c.mean).setting
        return next(t.params for t in trials if not t.baseline and setting_of(t, pairing) == best)
    finished = [t for t in trials if t.state == FINISHED and not t.baseline and t.objective is not None]
    return max(finished, key=lambda t: sign * t.objective).params if finished else None


def confirmation_points(params: dict[str, Any], pairing: Pairing, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The setting ``params`` (its pairing key left out) and the baseline on each of ``seeds``."""
    setting = {k: v for k, v in params.items() if k != pairing.pair_by}
    points = [{**setting, pairing.pair_by: s} for s in seeds]
    if pairing.baseline_key:
        points += [{pairing.baseline_key: pairing.baseline_value, pairing.pair_by: s} for s in seeds]
    return points


def fresh_seed(trials: Sequence[TrialRecord]) -> int:
    """The first value of the pairing key after every one the trials used: confirmation seeds start there."""
    used = [t.seed for t in trials if t.seed is not None]
    return max(used) + 1 if used else 0
