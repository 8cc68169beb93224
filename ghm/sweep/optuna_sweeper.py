"""``hydra/sweeper: optuna``: hydra-optuna-sweeper's behaviour, so an app written for that plugin runs unchanged.

The algorithm is that plugin's (1.3 and 1.4 series) on the installed Optuna: the study is created
(or loaded, ``load_if_exists``) with the configured sampler and directions; each batch of
``n_jobs`` trials is asked for, launched through Hydra's configured launcher (``hydra/launcher``,
so the jobs' folders are ``<hydra.sweep.dir>/<job number>`` as with Hydra's basic sweeper) and
told; a persisted study gets ``n_trials`` more trials; a batch whose failure rate exceeds
``max_failure_rate`` stops the sweep with the task's own exception. The sweep ends with
``optimization_results.yaml`` in the sweep folder and the "Best parameters / Best value" lines (a
Pareto front for several directions). Beyond upstream, ``hydra.sweeper.mlflow.experiment_name``
gives the sweep an MLflow parent run holding those results. No Ray, no pruning and no baselines
here: those are the project's own sweeper's (``hydra/sweeper: ghm``).
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable, MutableSequence, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial, TrialState

from ghm.sweep.config import OptunaSweeperConf
from ghm.sweep.space import to_distribution

log = logging.getLogger(__name__)

def distribution_from_config(config: dict[str, Any]) -> BaseDistribution:
    """One entry of the deprecated ``search_space`` (``type``: int, float or categorical)."""
    kind, low, high, step, log_scale = config["type"], config.get("low"), config.get("high"), config.get("step"), config.get("log", False)
    kind = getattr(kind, "name", kind)
    if kind == "categorical":
        return CategoricalDistribution(config["choices"])
    if kind == "int":
        return IntDistribution(int(low), int(high), log=log_scale, step=1 if log_scale or step is None else int(step))
    if kind == "float":
        return FloatDistribution(low, high, log=log_scale, step=None if log_scale else step)
    raise NotImplementedError(f"{kind} is not supported by Optuna sweeper.")


def params_from_overrides(arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, Any], list[str]]:
    """Upstream's split of the overrides: the swept ones as Optuna distributions, the fixed ones as override values, and the
    deletions (``~key``, ``~key=value``) as they were given, which every trial passes on unchanged."""
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, Any] = {}
    deletions: list[str] = []
    for override in OverridesParser.create().parse_overrides(arguments):
        if override.is_delete():
            deletions.append(override.input_line)
        elif override.is_sweep_override():
            distributions[override.get_key_element()] = to_distribution(override)
        else:
            fixed[override.get_key_element()] = override.get_value_element_as_str()
    return distributions, fixed, deletions


def grid_choices(name: str, distribution: BaseDistribution) -> list[Any]:
    """A swept parameter's values for the grid sampler: its choices, or its range's steps (the stop excluded, as Hydra's range)."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution | FloatDistribution) and distribution.step is not None and not distribution.log:
        count = int((distribution.high - distribution.low) // distribution.step)
        return [distribution.low + i * distribution.step for i in range(count)]
    raise ValueError(f"{name}: GridSampler only supports discrete distributions.")


def directions_of(direction: Any) -> list[str]:
    """``minimize``, ``maximize`` or a list of them (enum members or names)."""
    values = list(direction) if isinstance(direction, MutableSequence | Sequence) and not isinstance(direction, str) else [direction]
    names = [getattr(d, "name", d) for d in values]
    for name in names:
        if name not in ("minimize", "maximize"):
            raise ValueError(f"hydra.sweeper.direction must be minimize, maximize or a list of them, got {name!r}")
    return names


def objective_values(value: Any, directions: list[str]) -> list[float]:
    """The job's return value as the study's values, with upstream's errors."""
    if len(directions) == 1:
        try:
            return [float(value)]
        except (ValueError, TypeError):
            raise ValueError(f"Return value must be float-castable. Got '{value}'.").with_traceback(sys.exc_info()[2]) from None
    try:
        values = [float(v) for v in value]
    except (ValueError, TypeError):
        raise ValueError(f"Return value must be a list or tuple of float-castable values. Got '{value}'.").with_traceback(
            sys.exc_info()[2]) from None
    if len(values) != len(directions):
        raise ValueError("The number of the values and the number of the objectives are mismatched. "
                         f"Expect {len(directions)}, but actually {len(values)}.")
    return values


def warn_search_space(params: Any, search_space: Any) -> None:
    """Upstream's warnings: ``search_space`` is deprecated, and ignored beside ``params``."""
    if search_space is not None and params is not None:
        warnings.warn("Both hydra.sweeper.params and hydra.sweeper.search_space are configured.\n"
                      "Hydra will use hydra.sweeper.params for defining search space.", stacklevel=3)
    elif search_space is not None:
        warnings.warn("`hydra.sweeper.search_space` is deprecated and will be removed in the next major release. "
                      "Please configure with `hydra.sweeper.params`.", stacklevel=3)


class OptunaSweep:
    """One sweep with hydra-optuna-sweeper's semantics; :meth:`run` runs it and writes its results."""

    def __init__(self, settings: OptunaSweeperConf, sampler: Any, hydra_context: HydraContext, task_function: TaskFunction,
                 config: DictConfig) -> None:
        if not 0.0 <= settings.max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate must be in [0, 1], got {settings.max_failure_rate}")
        self.settings = settings
        self.sampler = sampler
        self.config = config
        self.directions = directions_of(settings.direction)
        self.launcher: Launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                          task_function=task_function)
        path = settings.custom_search_space
        # A leading dot names a module beside the app (the script's folder is on sys.path), as upstream's example writes it.
        self.extend: Callable[[DictConfig, Trial], None] | None = get_method(path.lstrip(".")) if path else None
        self.job_idx = 0
        self.sweep_dir = Path(str(config.hydra.sweep.dir))  # a relative one is under the launching directory, as Hydra's

    def search_arguments(self, arguments: list[str]) -> list[str]:
        """``hydra.sweeper.params`` (or the deprecated ``search_space``) followed by the command line's overrides."""
        warn_search_space(self.settings.params, self.settings.search_space)
        return [f"{key}={value}" for key, value in (self.settings.params or {}).items()] + list(arguments)

    def run(self, arguments: list[str]) -> None:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")  # the sweep's config, as Hydra's basic sweeper keeps it
        distributions, fixed, deletions = params_from_overrides(self.search_arguments(arguments))
        for name in fixed:  # a fixed value wins over a swept one
            distributions.pop(name, None)
        if self.settings.params is None and self.settings.search_space:
            for name, entry in self.settings.search_space.items():
                distributions.setdefault(str(name), distribution_from_config(entry))
        n_trials, sampler = self.settings.n_trials, self.sampler
        is_grid = isinstance(sampler, functools.partial) and sampler.func is optuna.samplers.GridSampler
        if is_grid:
            grid = {name: grid_choices(name, d) for name, d in distributions.items()}
            sampler = sampler(grid)
            size = 1
            for values in grid.values():
                size *= len(values)
            n_trials = min(n_trials, size)
            log.info(f"Updating num of trials to {n_trials} due to using GridSampler.")
        study = optuna.create_study(study_name=self.settings.study_name, storage=self.settings.storage, sampler=sampler,
                                    directions=self.directions, load_if_exists=True)
        log.info(f"Study name: {study.study_name}")
        log.info(f"Storage: {self.settings.storage}")
        log.info(f"Sampler: {type(sampler).__name__}")
        log.info(f"Directions: {self.directions}")
        parent = None
        if self.settings.mlflow.experiment_name:  # MLflow's import costs seconds: only a sweep that records pays it
            from ghm.sweep.parent_run import ParentRun

            parent = ParentRun.of(self.settings.mlflow, Path(self.config.hydra.runtime.cwd))
        if parent:
            parent.start(study.study_name, "optuna", {"directions": self.directions, "sampler": type(sampler).__name__,
                                                      "n_trials": n_trials, "n_jobs": self.settings.n_jobs}, resume=False)
        try:
            to_go = n_trials
            while to_go > 0:
                batch = min(to_go, self.settings.n_jobs)
                trials = [study.ask() for _ in range(batch)]
                overrides = [self._configure(trial, distributions, fixed) + tuple(deletions) for trial in trials]
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                self._tell(study, trials, returns, is_grid)
                self.job_idx += len(returns)
                to_go -= batch
            results = self._save(study)
        except BaseException as err:
            if parent:
                parent.fail(err)
            raise
        if parent:
            parent.log_optimization_results(results)
            if len(self.directions) > 1:
                parent.log_dashboard(self._pareto_page(study))
            parent.end()

    def _configure(self, trial: Trial, distributions: dict[str, BaseDistribution], fixed: dict[str, Any]) -> tuple[str, ...]:
        """A trial's overrides: its suggested values, those of ``custom_search_space``, and the fixed ones."""
        for name, distribution in distributions.items():
            trial._suggest(name, distribution)
        for name, value in fixed.items():
            trial.set_user_attr(name, value)
        if self.extend:
            self.extend(self.config, trial)
        overlap = trial.params.keys() & trial.user_attrs.keys()
        if overlap:
            raise ValueError(f"Overlapping fixed parameters and search space parameters found! Overlapping parameters: {list(overlap)}")
        return tuple(f"{name}={value}" for name, value in {**trial.params, **fixed}.items())

    def _tell(self, study: optuna.Study, trials: list[Trial], returns: Sequence[JobReturn], is_grid: bool) -> None:
        """Record each job's values (or its failure); above ``max_failure_rate`` re-raise the task's own exception."""
        failures = []
        for number, (trial, result) in enumerate(zip(trials, returns, strict=True), start=self.job_idx):
            try:
                values = objective_values(result.return_value, self.directions)  # return_value re-raises the task's exception
            except Exception as error:  # the task's failure is the trial's, recorded as FAIL
                study.tell(trial, state=TrialState.FAIL)
                log.warning(f"Failed experiment: {error}")
                failures.append(error)
                continue
            try:
                study.tell(trial, values=values)
            except RuntimeError as error:  # the grid sampler stops the study once its grid is done
                if not (is_grid and "`Study.stop` is supposed to be invoked" in str(error)):
                    raise
            log.info("#%d : %s", number, values[0] if len(values) == 1 else values)  # the job's result, by its launcher number
        if failures and len(failures) / len(returns) > self.settings.max_failure_rate:
            log.error(f"Failed {len(failures)} times out of {len(returns)} with max_failure_rate={self.settings.max_failure_rate}.")
            for result in returns:
                result.return_value  # noqa: B018 - raises the task's exception with its traceback

    def _pareto_page(self, study: optuna.Study) -> Path:
        """The dashboard of a multi-objective search: Optuna's Pareto-front plot of every trial, the front highlighted."""
        from optuna.visualization import plot_pareto_front

        names = [f"objective {i} ({d})" for i, d in enumerate(self.directions)]
        figure = plot_pareto_front(study, target_names=names) if len(self.directions) <= 3 else None
        path = self.sweep_dir / "dashboard.html"
        if figure is None:  # Optuna plots two or three objectives; the front's table is in optimization_results.yaml
            path.write_text("<p>Pareto front of more than three objectives: see optimization_results.yaml</p>", encoding="utf-8")
        else:
            figure.write_html(str(path), include_plotlyjs=True, full_html=True)
        return path

    def _save(self, study: optuna.Study) -> dict[str, Any]:
        """``optimization_results.yaml`` in the sweep folder and the log lines, as upstream writes them."""
        if len(self.directions) < 2:
            best = study.best_trial
            results: dict[str, Any] = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            log.info(f"Best parameters: {best.params}")
            log.info(f"Best value: {best.value}")
        else:
            front = study.best_trials
            results = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values} for t in front]}
            log.info(f"Number of Pareto solutions: {len(front)}")
            for t in front:
                log.info(f"    Values: {t.values}, Params: {t.params}")
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")
        return results
