"""From trials to settings: each setting against the baseline, seed by seed, and the best setting.

Pure functions of a sweep's :class:`~ghm.comparison.record.TrialRecord` s and its
:class:`~ghm.comparison.pairing.Pairing`: the engine ranks and confirms with them, the dashboard
shows what they give.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ghm.comparison.pairing import Pairing
from ghm.comparison.record import FINISHED, REUSED, TrialRecord

if TYPE_CHECKING:  # SciPy's import costs a sweep's start a second or more: only comparing needs it
    from ghm.comparison.statistics import PairedComparison


def setting_of(trial: TrialRecord, pairing: Pairing) -> str:
    """What a trial tries: a comparison of arms' confirmation job by its arm and condition (``ghm train.epochs=14``: the arm's
    settings are in its overrides and tuning), any other trial by its swept values but the pairing key. Trials with one label
    are seeds of one setting."""
    if trial.arm is not None and trial.search_trial is None:
        return " ".join([trial.arm, *(f"{k}={v}" for k, v in trial.condition.items())])
    return pairing.setting_label(trial.params)


def context_of(trials: Sequence[TrialRecord], pairing: Pairing) -> Callable[[TrialRecord], tuple[tuple[str, str], ...]]:
    """What a setting is compared within: what the baseline trials sweep besides the baseline's key and the pairing key (a grid
    of ``loss=focal,ghm train.lr=0.01,0.02`` compares each rate's GHM with that rate's focal loss), or an arm's condition."""
    keys = sorted({k for t in trials if t.baseline and t.arm is None for k in t.params} - {pairing.baseline_key, pairing.pair_by})

    def context(trial: TrialRecord) -> tuple[tuple[str, str], ...]:
        if trial.arm is not None:
            return tuple((k, str(v)) for k, v in trial.condition.items())
        return tuple((k, str(trial.params.get(k))) for k in keys)

    return context


def compare_settings(trials: Sequence[TrialRecord], pairing: Pairing, direction: str = "maximize", effect: float | None = None,
                     confidence: float = 0.95) -> list[PairedComparison]:
    """Each setting (the swept values but the pairing key) against the baseline of its context (:func:`context_of`), on the
    seeds both finished. ``effect``: a difference of interest, whose seeds needed each comparison gives; ``confidence``: of
    its t interval. A comparison of arms' search trials are no settings of the verdict.
    """
    usable = [t for t in trials if t.objective is not None and t.state in (FINISHED, REUSED) and t.seed is not None
              and t.search_trial is None]
    context = context_of(usable, pairing)
    baselines: dict[tuple, dict[int, float]] = {}
    settings: dict[str, tuple[tuple, dict[int, float]]] = {}
    for t in usable:
        if t.baseline:
            baselines.setdefault(context(t), {})[t.seed] = t.objective
        else:
            settings.setdefault(setting_of(t, pairing), (context(t), {}))[1][t.seed] = t.objective
    paired = {label: (values, baselines[where]) for label, (where, values) in settings.items()
              if set(values) & set(baselines.get(where, {}))}
    if not paired:
        return []
    from ghm.comparison.statistics import compare  # SciPy: only where a setting meets its baseline

    return [compare(label, values, baseline, confidence, larger_is_better=direction == "maximize", effect=effect)
            for label, (values, baseline) in paired.items()]


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
