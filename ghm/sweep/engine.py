"""The sweep engine behind the Hydra sweeper: one sweep from its definition to its report.

A sweep parses its overrides into a search space (:mod:`ghm.sweep.space`), chooses a search (a
grid or Optuna, :mod:`ghm.sweep.search`), takes baselines that already ran from MLflow
(:mod:`ghm.sweep.baselines`), runs the other trials on Ray Tune as Hydra jobs of the task
(:mod:`ghm.sweep.trials`), compares each setting with the declared baseline seed by seed
(:mod:`ghm.comparison`), optionally confirms the best setting on fresh seeds, and reports on the
console, on its MLflow parent run and in its dashboard (:mod:`ghm.sweep.report`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from ghm.comparison.pairing import Pairing
from ghm.comparison.record import SweepRecord, TrialRecord
from ghm.comparison.settings import best_params, compare_settings, confirmation_points
from ghm.sweep.baselines import reuse_finished
from ghm.sweep.config import SweeperConf
from ghm.sweep.identity import SweepIdentity
from ghm.sweep.parent_run import ParentRun
from ghm.sweep.report import check_failures, report
from ghm.sweep.search import GridSearch, OptunaSearch, Search
from ghm.sweep.space import SearchSpace, parse_search_space
from ghm.sweep.trials import TaskJob, TrialSpec, failure_value, ray_session, run_trials
from ghm.sweep.verdict import publish_verdict
from ghm.tracking.store import default_tracking_uri

log = logging.getLogger(__name__)


def search_kind(settings: SweeperConf, space: SearchSpace) -> str:
    """``grid`` or ``optuna``: with ``search: auto``, hydra-optuna-sweeper's ``params`` mean a search, command-line lists a grid."""
    if settings.search != "auto":
        return settings.search
    searched = parse_search_space([], settings.params).sweeps if settings.params else ()
    return "optuna" if searched or not space.has_grid else "grid"


def state_dir(root_dir: Path) -> Path:
    """Where sweeps launched from ``root_dir`` keep what resumes them by default (Ray Tune's experiments, the study).

    The user's cache (``$XDG_CACHE_HOME``, else ``~/.cache``), one folder per launching directory:
    never the project's own folder, and stable across launches, unlike the timestamped sweep folders.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ghm-sweep" / hashlib.sha1(str(root_dir.resolve()).encode()).hexdigest()[:12]


def sweep_definition(settings: SweeperConf, space: SearchSpace, kind: str) -> dict[str, Any]:
    """What makes two sweeps the same question: their space, fixed overrides, search and comparison settings."""
    return {"fixed": sorted(space.fixed), "sweeps": [o.input_line for o in space.sweeps], "mode": kind,
            "n_trials": settings.n_trials, "baseline": settings.baseline, "confirm_seeds": settings.confirm_seeds,
            "metric": settings.metric, "direction": settings.direction, "sampler": str(settings.sampler),
            "pruning": [settings.pruner.enabled, settings.pruner.grace_period, settings.pruner.reduction_factor]}


def sweep_name(settings: SweeperConf, space: SearchSpace, kind: str) -> str:
    """A stable name for this sweep's definition, so the same command finds (and resumes) it."""
    if settings.study_name:
        return settings.study_name
    definition = sweep_definition(settings, space, kind)
    return "sweep-" + hashlib.sha1(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Sweep:
    """One sweep of a Hydra task; :meth:`run` runs it and returns its record."""

    settings: SweeperConf
    hydra_context: HydraContext
    task_function: TaskFunction
    config: DictConfig

    def __post_init__(self) -> None:
        self.settings.check()
        self.root_dir = Path(self.config.hydra.runtime.cwd)  # the launching working directory: relative paths are under it
        self.mode = "max" if self.settings.direction == "maximize" else "min"
        declared = Pairing.declare(self.settings.baseline, self.settings.pair_by, self.settings.pair_ignore)
        self.pairing = declared if declared.applies_to(self.config) else Pairing(pair_by=declared.pair_by, ignore=declared.ignore)

    def run(self, arguments: list[str]) -> SweepRecord:
        space = parse_search_space(arguments, self.settings.params)
        kind = search_kind(self.settings, space)
        sweep_dir = (self.root_dir / str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        parent = ParentRun.of(self.settings.mlflow, self.root_dir)
        storage = self.study_storage() if kind == "optuna" else None
        identity = SweepIdentity.resolve(sweep_name(self.settings, space, kind),
                                         {**sweep_definition(self.settings, space, kind), "storage": storage},
                                         self.tune_storage(), explicit=bool(self.settings.study_name), resume=self.settings.resume,
                                         taken=lambda candidate: self._taken(candidate, storage, parent))
        name = identity.name
        if storage is not None:
            log.info("study %s in %s (optuna-dashboard %s shows it live)", name, storage, storage)
        if parent:
            parent.start(name, kind, self._definition(space, kind, name), identity.resuming)
        try:
            with ray_session(self.settings.ray):
                search = self._search(space, kind, name, parent, storage)
                trials = self._run(name, search, space.fixed, parent, sweep_dir, identity.resuming)
                comparisons = compare_settings(trials, self.pairing)
                if self.settings.confirm_seeds > 0:
                    confirmed = self._confirm(trials, comparisons, space.fixed, name, parent, sweep_dir, identity.resuming)
                    trials, comparisons = trials + confirmed, comparisons + compare_settings(confirmed, self.pairing)
            SweepIdentity.finish(self.tune_storage(), name)
            if parent:
                parent.attach_runs(trials)
            record = SweepRecord(name=name, search=kind, metric=self.settings.metric, direction=self.settings.direction,
                                 pairing=self.pairing, trials=trials, comparisons=comparisons, space=search.space())
            report(record, parent, sweep_dir)
            publish_verdict(record, parent, self.settings.registry)  # the parent run's description, the Model Registry
        except BaseException as err:
            if parent:
                parent.fail(err)
            raise
        check_failures(record, self.settings.max_failure_rate)
        return record

    def _search(self, space: SearchSpace, kind: str, name: str, parent: ParentRun | None, storage: str | None) -> Search:
        if storage is not None:
            return OptunaSearch(space, self.settings.sampler, storage, name, self.settings.n_trials)
        return self._grid(dict(enumerate(space.grid())), space.fixed, parent)

    def study_storage(self) -> str:
        """The Optuna storage: ``hydra.sweeper.storage``, else ``OPTUNA_STORAGE``, else a SQLite file in :func:`state_dir`."""
        if self.settings.storage or os.environ.get("OPTUNA_STORAGE"):
            return self.settings.storage or os.environ["OPTUNA_STORAGE"]
        path = state_dir(self.root_dir) / "optuna.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"

    def tune_storage(self) -> Path:
        """Ray Tune's experiments: ``hydra.sweeper.ray.storage_path`` (relative: to the launching directory), else :func:`state_dir`."""
        chosen = self.settings.ray.storage_path
        return (self.root_dir / chosen if chosen else state_dir(self.root_dir) / "ray_results").resolve()

    @staticmethod
    def _taken(name: str, storage: str | None, parent: ParentRun | None) -> bool:
        """Whether a sweep that left no Ray Tune folder here already used ``name`` (its study, its parent run)."""
        if storage is not None:
            import optuna

            if name in {s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)}:
                return True
        return parent is not None and parent.exists(name)

    def trial_environment(self, search: Search, parent: ParentRun | None) -> dict[str, str]:
        """What every trial must share with the driver wherever Ray runs it: where runs are tracked and the study lives."""
        environment = {"MLFLOW_TRACKING_URI": parent.tracking_uri if parent else default_tracking_uri(self.root_dir)}
        if isinstance(search, OptunaSearch):
            environment["OPTUNA_STORAGE"] = search.storage
        return environment

    def _grid(self, points: dict[int, dict[str, Any]], fixed: tuple[str, ...], parent: ParentRun | None) -> GridSearch:
        """A grid whose baseline points that already ran are reused, the others to run."""
        reused = reuse_finished(points, fixed, self.pairing, parent, self._compose, self.settings.metric,
                                lambda params: self.pairing.value_of(params, fixed, self.config),
                                baselines_only=self.settings.reuse == "baselines") \
            if parent and (self.pairing.baseline or self.settings.reuse == "finished") else []
        return GridSearch(points, reused)

    def _compose(self, overrides: list[str]) -> DictConfig:
        return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

    def _run(self, experiment: str, search: Search, fixed: tuple[str, ...], parent: ParentRun | None,
             sweep_dir: Path, resume: bool) -> list[TrialRecord]:
        """The search's trials (those reused from MLflow, and those run on Ray Tune now), by number."""
        if not search.runs_any():
            return search.given()
        storage = self.tune_storage()
        job = TaskJob(self.hydra_context, self.task_function, self.config, Singleton.get_state(), fixed, str(sweep_dir),
                      self.trial_environment(search, parent))
        spec = TrialSpec(job, search,
                         self.settings.metric, failure_value(self.mode), str(storage / experiment / "completed"), experiment,
                         parent.run_id if parent else None)
        results = run_trials(experiment, spec, mode=self.mode, n_jobs=self.settings.n_jobs, ray=self.settings.ray,
                             pruner=self.settings.pruner, max_epochs=self.settings.max_epochs, storage=storage,
                             resume=resume)
        results += search.settle({r.number for r in results})
        ran = [TrialRecord(number=r.number, params=r.params, state=r.state, objective=r.objective,
                           seed=self.pairing.value_of(r.params, fixed, self.config), baseline=self.pairing.is_baseline(r.params, fixed),
                           error=r.error) for r in results]
        return sorted(search.given() + ran, key=lambda t: t.number)

    def _confirm(self, trials: list[TrialRecord], comparisons: list, fixed: tuple[str, ...], name: str,
                 parent: ParentRun | None, sweep_dir: Path, resume: bool) -> list[TrialRecord]:
        """The best setting and the baseline on ``confirm_seeds`` fresh seeds, paired: one noisy trial is no evidence."""
        params = best_params(trials, comparisons, self.pairing, self.settings.direction)
        if params is None:
            log.warning("no finished trial to confirm")
            return []
        points = confirmation_points(params, trials, self.pairing, self.settings.confirm_seeds)
        first = max(t.number for t in trials) + 1  # confirmation trials continue the sweep's numbering
        fixed = tuple(line for line in fixed if not line.startswith(f"{self.pairing.pair_by}="))
        log.info("confirming %s against the baseline on %s", self.pairing.setting_label(params), [p[self.pairing.pair_by] for p in points])
        grid = self._grid(dict(enumerate(points, start=first)), fixed, parent)
        return self._run(f"{name}-confirm", grid, fixed, parent, sweep_dir, resume)

    def _definition(self, space: SearchSpace, kind: str, name: str) -> dict[str, Any]:
        """The parent run's params: how the sweep searches, and over what."""
        return {"search": kind, "metric": self.settings.metric, "direction": self.settings.direction, "n_trials": self.settings.n_trials,
                "n_jobs": self.settings.n_jobs, "baseline": self.settings.baseline, "study_name": name,
                **{f"space.{o.get_key_element()}": o.input_line.split("=", 1)[1] for o in space.sweeps},
                **{f"fixed.{line.split('=', 1)[0].lstrip('+~')}": line.split("=", 1)[1] for line in space.fixed}}
