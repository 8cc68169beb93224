"""How a sweep chooses its trials: a grid of the command line's values, an Optuna search, or one arm's search in a
tuned comparison (Optuna's suggestions, each run on every tuning seed), behind one interface.

A :class:`Search` gives Ray Tune what it needs to run its trials (a parameter space, a search
algorithm or none, a number of samples) and reads back, from a Tune trial's config, which trial of
the sweep it is (its number) and what it tries (its swept values). Ray is imported only when a
sweep runs, not when Hydra loads the plugin.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import statistics
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from optuna.distributions import distribution_to_json

from ghm.comparison.record import FAILED, FINISHED, PRUNED, TrialRecord
from ghm.sweep.space import SearchSpace

log = logging.getLogger(__name__)

OPTUNA_NUMBER = "optuna_trial_number"  # added to each suggested config: the trial's number in the Optuna study


@functools.cache
def optuna_storage(url: str) -> Any:
    """One Optuna storage per URL in this process, with Optuna's cache of finished trials (``optuna.storages.get_storage``).

    Each new ``RDBStorage`` connects and checks its schema (a fifth of a second on SQLite), and an uncached one
    reads every trial back for each suggestion: a sweep's driver opens its study's storage once.
    """
    import optuna

    return optuna.storages.get_storage(url)


@dataclass(frozen=True)
class TrialResult:
    """What one trial of the search gave."""

    number: int
    params: dict[str, Any]
    state: str
    objective: float | None
    error: str | None


@dataclass(frozen=True)
class Role:
    """A job's place in a comparison of arms: its arm, its arm's search trial (None: a confirmation), its condition."""

    arm: str | None = None
    search_trial: int | None = None
    condition: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class TunePlan:
    """Ray Tune's view of a search: ``Tuner(param_space=..., tune_config=TuneConfig(search_alg=..., num_samples=...))``."""

    param_space: dict[str, Any]
    search_alg: Any  # a ray.tune.search.Searcher, or None
    num_samples: int


class Search(ABC):
    """One way of choosing trials; :attr:`prunable` says whether early stopping may cut them."""

    name: str
    prunable: bool

    @abstractmethod
    def plan(self, metric: str, mode: str) -> TunePlan:
        """What Ray Tune runs, for an objective ``metric`` to ``mode`` ("max" or "min")."""

    @abstractmethod
    def trial(self, config: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The sweep's number and the swept values of the trial Ray Tune ran with ``config``."""

    def space(self) -> dict[str, Any]:
        """The searched distributions, for the sweep's record (a grid has none)."""
        return {}

    def given(self) -> list[TrialRecord]:
        """Trials answered without running (baselines reused from MLflow)."""
        return []

    def runs_any(self) -> bool:
        """Whether any trial is left to run."""
        return True

    def role(self, number: int) -> Role:
        """The trial ``number``'s place in a comparison of arms (none outside one)."""
        return Role()

    @abstractmethod
    def settle(self, known: set[int], completed: Path) -> list[TrialResult]:
        """Once every trial has ended: close what an interrupted attempt left open in the search's own records,
        and return the trials it finished that Ray Tune's restored state lost (``known``: the numbers Tune reported;
        ``completed``: the folder of each finished trial's record, ``<number>.json``)."""


class GridSearch(Search):
    """Every combination of the swept values, numbered by its place in the grid; some may be given (reused) already."""

    name = "grid"
    prunable = False  # a grid is a comparison: every one of its runs finishes

    def __init__(self, points: dict[int, dict[str, Any]], reused: list[TrialRecord] | None = None,
                 roles: dict[int, Role] | None = None) -> None:
        self.points = points
        self.reused = list(reused or [])
        self.todo = sorted(set(points) - {t.number for t in self.reused})
        self.roles = dict(roles or {})  # a comparison of arms' confirmation: each point's arm and condition
        for trial in self.reused:
            role = self.role(trial.number)
            trial.arm, trial.condition = role.arm, dict(role.condition)

    def given(self) -> list[TrialRecord]:
        return list(self.reused)

    def runs_any(self) -> bool:
        return bool(self.todo)

    def role(self, number: int) -> Role:
        return self.roles.get(number, Role())

    def settle(self, known: set[int], completed: Path) -> list[TrialResult]:
        """A grid keeps no records beside Ray Tune's (its trials' numbers are fixed): nothing to settle."""
        return []

    def plan(self, metric: str, mode: str) -> TunePlan:
        from ray import tune

        return TunePlan({"trial": tune.grid_search(self.todo)}, None, 1)

    def trial(self, config: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        number = int(config["trial"])
        return number, self.points[number]


class OptunaSearch(Search):
    """Optuna's sampler suggests each trial (asynchronously, through Ray Tune's OptunaSearch) in a persistent study."""

    name = "optuna"
    prunable = True

    def __init__(self, space: SearchSpace, sampler: dict[str, Any] | None, storage: str, study_name: str, n_trials: int) -> None:
        self.search_space = space
        self.sampler = sampler
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials

    def plan(self, metric: str, mode: str) -> TunePlan:
        import optuna
        from ray.tune.search.optuna import OptunaSearch as TuneOptunaSearch

        class StateAwareOptunaSearch(TuneOptunaSearch):
            """Tells Optuna which trials Tune pruned and which failed, gives trials their Optuna number, and replays safely."""

            def suggest(self, trial_id: str) -> dict | None:
                config = super().suggest(trial_id)
                if isinstance(config, dict):
                    config = {**config, OPTUNA_NUMBER: self._ot_trials[trial_id].number}
                return config

            def on_trial_result(self, trial_id: str, result: dict) -> None:
                # A trial a resumed sweep replays: the study holds its result since before the interruption.
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    super().on_trial_result(trial_id, result)

            def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
                state = (result or {}).get("trial_state")
                if error or state == FAILED:
                    super().on_trial_complete(trial_id, None, error=True)
                elif state != FINISHED:
                    super().on_trial_complete(trial_id, None, error=False)  # no final value: PRUNED
                else:
                    super().on_trial_complete(trial_id, result, error)

        searcher = StateAwareOptunaSearch(space=self.search_space.distributions(), metric=metric, mode=mode,
                                          sampler=instantiate(self.sampler) if self.sampler else None, study_name=self.study_name,
                                          storage=optuna_storage(self.storage))
        return TunePlan({}, searcher, self.n_trials)

    def trial(self, config: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return int(config[OPTUNA_NUMBER]), {k: config[k] for k in self.search_space.keys}

    def space(self) -> dict[str, Any]:
        return {key: json.loads(distribution_to_json(d)) for key, d in self.search_space.distributions().items()}

    def settle(self, known: set[int], completed: Path) -> list[TrialResult]:
        """Fail the trials a killed sweep asked for and never ran; return those it finished after Tune's last snapshot.

        Ray Tune saves its state now and then: a trial told to the study just before the launcher was
        killed is in the study but not in the restored experiment. It finished, so it is kept, not lost.
        """
        import optuna

        states = {optuna.trial.TrialState.COMPLETE: FINISHED, optuna.trial.TrialState.PRUNED: PRUNED,
                  optuna.trial.TrialState.FAIL: FAILED}
        lost = []
        for trial in self._closed_trials():
            if trial.number not in known and trial.state in states:
                lost.append(TrialResult(trial.number, {k: trial.params[k] for k in self.search_space.keys}, states[trial.state],
                                        trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None, None))
        return lost

    def _closed_trials(self) -> list[Any]:
        """The study's trials that ran, after failing those an interrupted sweep asked for and never ran (no trial of the sweep)."""
        import optuna

        study = optuna.load_study(study_name=self.study_name, storage=optuna_storage(self.storage))
        ran = []
        for trial in study.get_trials(deepcopy=False):
            if trial.state == optuna.trial.TrialState.RUNNING:
                log.warning("trial %d of study %s was asked for by an interrupted sweep and never ran: marked failed", trial.number,
                            self.study_name)
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            else:
                ran.append(trial)
        return ran


class ArmSearch(OptunaSearch):
    """One arm of a tuned comparison: Optuna suggests its nuisance values, and each suggestion runs on every tuning seed.

    Ray Tune runs one job per (suggestion, seed) through its ``Repeater``; the study is told the mean over the seeds
    when every seed finished, and the suggestion is pruned (or failed) when any seed was (or failed). The arm's
    jobs are numbered from ``first_number``: suggestion ``t`` on the ``i``-th seed is ``first_number + t * seeds + i``.
    """

    def __init__(self, arm: str, overrides: dict[str, Any], space: SearchSpace, sampler: dict[str, Any] | None, storage: str,
                 study_name: str, budget: int, seeds: list[int], pair_by: str, first_number: int, metric: str,
                 condition: dict[str, Any] | None = None) -> None:
        super().__init__(space, sampler, storage, study_name, budget)
        self.arm = arm
        self.metric = metric
        self.condition = dict(condition or {})
        self.overrides = {**overrides, **self.condition}  # every job of the search gets the arm's and the condition's values
        self.seeds = list(seeds)
        self.pair_by = pair_by
        self.first_number = first_number

    def plan(self, metric: str, mode: str) -> TunePlan:
        searcher = super().plan(metric, mode).search_alg
        return TunePlan({}, seed_repeater(searcher, len(self.seeds)), self.n_trials * len(self.seeds))

    def trial(self, config: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        from ray.tune.search.repeater import TRIAL_INDEX

        index = int(config[TRIAL_INDEX])
        number = self.first_number + int(config[OPTUNA_NUMBER]) * len(self.seeds) + index
        return number, self._params({k: config[k] for k in self.search_space.keys}, index)

    def _params(self, searched: dict[str, Any], index: int) -> dict[str, Any]:
        return {**self.overrides, **searched, self.pair_by: self.seeds[index]}

    def role(self, number: int) -> Role:
        return Role(self.arm, (number - self.first_number) // len(self.seeds), tuple(self.condition.items()))

    def settle(self, known: set[int], completed: Path) -> list[TrialResult]:
        """As :meth:`OptunaSearch.settle`, per seed: a lost job's result is its own record (``completed/<number>.json``)."""
        lost = []
        for trial in self._closed_trials():
            for index in range(len(self.seeds)):
                number = self.first_number + trial.number * len(self.seeds) + index
                record = completed / f"{number}.json"
                if number in known or not record.is_file():
                    continue
                result = json.loads(record.read_text())
                state = result.get("trial_state", FAILED)
                lost.append(TrialResult(number, self._params({k: trial.params[k] for k in self.search_space.keys}, index), state,
                                        result.get(self.metric) if state == FINISHED else None, result.get("error")))
        return lost



def seed_repeater(searcher: Any, repeats: int) -> Any:
    """Ray Tune's ``Repeater`` over ``searcher``, telling it a suggestion's state as well as its mean over the repeats.

    Tune's own Repeater averages whatever each repeat reported last, an early epoch's value included when
    a scheduler stopped it; here the searcher hears the mean only when every repeat finished, a failure
    when one failed, and a pruned suggestion otherwise.
    """
    from ray.tune.search.repeater import Repeater

    class SeedRepeater(Repeater):
        def __init__(self) -> None:
            super().__init__(searcher, repeat=repeats, set_index=True)
            self._states: dict[str, str] = {}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False, **kwargs: Any) -> None:
            group = self._trial_id_to_group[trial_id]
            state = FAILED if error else (result or {}).get("trial_state", PRUNED)
            self._states[trial_id] = state
            value = (result or {}).get(self.searcher.metric) if state == FINISHED else None
            group.report(trial_id, math.nan if value is None else float(value))
            if not group.finished_reporting():
                return
            states = [self._states[t] for t in group._trials]
            if all(s == FINISHED for s in states):
                mean = statistics.fmean(group.scores())
                self.searcher.on_trial_complete(group.primary_trial_id, {self.searcher.metric: mean, "trial_state": FINISHED})
            else:
                self.searcher.on_trial_complete(group.primary_trial_id, None, error=FAILED in states)

    return SeedRepeater()
