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


def compare_settings(trials: Sequence[TrialRecord], pairing: Pairing) -> list[PairedComparison]:
    """Each setting (the swept values but the pairing key) against the baseline, on the seeds both finished."""
    baseline = {t.seed: t.objective for t in trials if t.baseline and t.objective is not None and t.state in (FINISHED, REUSED)}
    if not baseline:
        return []
    settings: dict[str, dict[int, float]] = {}
    for t in trials:
        if t.baseline or t.objective is None or t.state not in (FINISHED, REUSED) or t.seed is None:
            continue
        settings.setdefault(pairing.setting_label(t.params), {})[t.seed] = t.objective
    return [compare(label, values, baseline) for label, values in settings.items() if set(values) & set(baseline)]


def best_params(trials: Sequence[TrialRecord], comparisons: Sequence[PairedComparison], pairing: Pairing,
                direction: str) -> dict[str, Any] | None:
    """The best setting's swept values: by mean paired difference where there is one, else by objective."""
    sign = 1 if direction == "maximize" else -1
    if comparisons:
        best = max(comparisons, key=lambda c: sign * c.mean).setting
        return next(t.params for t in trials if not t.baseline and pairing.setting_label(t.params) == best)
    finished = [t for t in trials if t.state == FINISHED and not t.baseline and t.objective is not None]
    return max(finished, key=lambda t: sign * t.objective).params if finished else None


def confirmation_points(params: dict[str, Any], trials: Sequence[TrialRecord], pairing: Pairing, count: int) -> list[dict[str, Any]]:
    """The best setting and the baseline on ``count`` fresh values of the pairing key (after every one used)."""
    used = [t.seed for t in trials if t.seed is not None]
    start = max(used) + 1 if used else 0
    seeds = range(start, start + count)
    setting = {k: v for k, v in params.items() if k != pairing.pair_by}
    points = [{**setting, pairing.pair_by: s} for s in seeds]
    if pairing.baseline_key:
        points += [{pairing.baseline_key: pairing.baseline_value, pairing.pair_by: s} for s in seeds]
    return points
