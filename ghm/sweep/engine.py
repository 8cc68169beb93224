"""The sweep engine behind the Hydra sweeper: trials on Ray Tune, Optuna search, baselines and paired comparison.

Ray Tune schedules the trials (one per CPU or GPU share, a new one as soon as any finishes), stops
unpromising ones early (ASHA on the per-epoch objective), retries trials whose worker died, and
restores an interrupted sweep from its experiment directory. Each trial is one Hydra job of the
task (``launch.py``), run in a Ray worker exactly as Hydra's launchers run jobs, with the
environment of :mod:`ghm.sweep.task` so it reports epochs and nests its MLflow run under the
sweep's parent run. After the trials, runs that differ only in the loss are paired with the declared
baseline (reusing a finished baseline run from MLflow when one exists) and compared per seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobStatus, env_override, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ghm.comparison.pairing import Pairing
from ghm.comparison.statistics import PairedComparison, compare, format_table
from ghm.sweep.space import SearchSpace, parse_search_space
from ghm.sweep.task import TRIAL_ENV
from ghm.tracking.store import default_tracking_uri, experiment_id, tracking_client
from ghm.tracking.version import code_version

log = logging.getLogger(__name__)

FINISHED, PRUNED, FAILED, REUSED = "finished", "pruned", "failed", "reused"
OPTUNA_NUMBER = "optuna_trial_number"  # added to each suggested config: the trial's number in the Optuna study


@dataclass
class SweepSettings:
    """The sweeper's config (``hydra.sweeper``) as the engine uses it."""

    search: str = "auto"  # auto: optuna when hydra.sweeper.params sweeps anything, else a grid of the command line
    sampler: Any = None  # an instantiable Optuna sampler config (``_target_``)
    direction: str = "maximize"
    storage: str | None = None  # Optuna RDB URL; default: OPTUNA_STORAGE, else sqlite optuna.db in the launching directory
    study_name: str | None = None  # default: derived from the sweep's definition (same command, same study)
    n_trials: int = 20
    n_jobs: int = 2
    params: dict[str, str] | None = None
    max_failure_rate: float = 0.0
    metric: str = "objective"  # what the task returns (and reports per epoch, for pruning)
    ray_address: str | None = None  # default: RAY_ADDRESS, else an embedded local Ray
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    prune: bool = True  # ASHA in Optuna searches (grids always run every trial to the end)
    grace_period: int = 1
    reduction_factor: int = 2
    max_retries: int = 2  # retries of a trial whose worker died (from its last epoch checkpoint)
    baseline: str | None = "loss=focal"
    pair_by: str = "seed"
    pair_ignore: tuple[str, ...] = ()
    confirm_seeds: int = 0
    storage_path: str | None = None  # Ray Tune results; default: ray_results/ in the launching directory
    resume: bool = True


@dataclass
class TrialOutcome:
    number: int
    params: dict[str, Any]
    state: str
    objective: float | None
    seed: int | None
    baseline: bool
    mlflow_run_id: str | None = None
    error: str | None = None


@dataclass
class _Job:
    """Everything a Ray worker needs to run one trial as a Hydra job (pickled to the worker)."""

    hydra_context: HydraContext
    task_function: TaskFunction
    config: DictConfig
    singleton_state: Any
    fixed: tuple[str, ...]
    grid: dict[int, dict[str, Any]] | None  # a grid's points by trial number
    keys: tuple[str, ...]
    metric: str
    parent_run_id: str | None
    sweep_name: str
    failure_value: float
    completed_dir: str  # one JSON per finished or failed trial: a resumed sweep never runs those again


@contextmanager
def _in_launch_dir(path: str) -> Iterator[None]:
    """Run the job where the sweep was launched (where the node has that folder), as Hydra's launchers do.

    Ray Tune starts a trial in a folder of its own; the job's relative paths (``hydra.runtime.cwd``,
    the embedded MLflow store, the dataset cache) mean the launching directory, as on the command line.
    """
    previous = os.getcwd()
    if os.path.isdir(path):
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _run_trial(tune_config: dict[str, Any], job: _Job) -> None:
    """The Ray Tune trainable: compose the trial's config, run the task, report its objective."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    if job.grid is not None:
        number = int(tune_config["trial"])
        params = job.grid[number]
    else:
        number, params = int(tune_config[OPTUNA_NUMBER]), {k: tune_config[k] for k in job.keys}
    record = Path(job.completed_dir) / f"{number}.json"
    if record.is_file():  # finished before the sweep was interrupted: report it again, do not re-run it
        tune.report(json.loads(record.read_text()))
        return
    overrides = [*job.fixed, *(f"{k}={v}" for k, v in params.items())]
    tags = {"sweep": job.sweep_name, "trial": str(number), **{f"param.{k}": str(v) for k, v in params.items()},
            "mlflow.runName": f"{number}: " + (" ".join(f"{k}={v}" for k, v in params.items()) or "trial")}
    if job.parent_run_id:
        tags["mlflow.parentRunId"] = job.parent_run_id
    with _in_launch_dir(job.config.hydra.runtime.cwd), env_override({TRIAL_ENV: str(number), "MLFLOW_RUN_CONTEXT": json.dumps(tags)}):
        setup_globals()
        Singleton.set_state(job.singleton_state)
        config = job.hydra_context.config_loader.load_sweep_config(job.config, overrides)
        with open_dict(config):
            config.hydra.job.id = trial_id
            config.hydra.job.num = number
        HydraConfig.instance().set_config(config)
        result = run_job(hydra_context=job.hydra_context, task_function=job.task_function, config=config,
                         job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    if result.status == JobStatus.COMPLETED:
        final = {job.metric: float(result.return_value), "trial_state": FINISHED}
    else:  # the task raised: a failed trial, not a worker death, so not retried
        error = result._return_value
        log.error("trial %d failed: %s: %s", number, type(error).__name__, error)
        final = {job.metric: job.failure_value, "trial_state": FAILED, "error": f"{type(error).__name__}: {error}"}
    record.parent.mkdir(parents=True, exist_ok=True)
    partial = record.with_suffix(".partial")
    partial.write_text(json.dumps(final))
    os.replace(partial, record)
    tune.report(final)


def sweep_name(settings: SweepSettings, space: SearchSpace, mode: str) -> str:
    """A stable name for this sweep's definition, so the same command finds (and resumes) it."""
    if settings.study_name:
        return settings.study_name
    definition = {"fixed": sorted(space.fixed), "sweeps": [o.input_line for o in space.sweeps], "mode": mode,
                  "n_trials": settings.n_trials, "baseline": settings.baseline, "confirm_seeds": settings.confirm_seeds,
                  "metric": settings.metric, "direction": settings.direction, "sampler": str(settings.sampler),
                  "pruning": [settings.prune, settings.grace_period, settings.reduction_factor]}
    return "sweep-" + hashlib.sha1(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:10]


class SweepEngine:
    """Runs one sweep; :meth:`run` returns every trial's outcome and the paired comparisons."""

    def __init__(self, settings: SweepSettings, hydra_context: HydraContext, task_function: TaskFunction,
                 config: DictConfig) -> None:
        if settings.search not in ("auto", "grid", "optuna"):
            raise ValueError(f"hydra.sweeper.search must be auto, grid or optuna, got {settings.search!r}")
        if settings.direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction must be maximize or minimize, got {settings.direction!r}")
        if settings.n_jobs < 1 or settings.n_trials < 1:
            raise ValueError("hydra.sweeper.n_jobs and hydra.sweeper.n_trials must be >= 1")
        self.settings = settings
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config
        self.mode = "max" if settings.direction == "maximize" else "min"
        self.root_dir = Path(config.hydra.runtime.cwd)  # the launching working directory: relative paths are under it
        pairing = Pairing.declare(settings.baseline, settings.pair_by, settings.pair_ignore)
        self.pairing = pairing if pairing.applies_to(config) else Pairing(pair_by=settings.pair_by, ignore=pairing.ignore)
        self.tracker = self._parent_tracker()

    # -- the sweep -----------------------------------------------------------------------------

    def run(self, arguments: list[str]) -> tuple[list[TrialOutcome], list[PairedComparison]]:
        space = parse_search_space(arguments, self.settings.params)
        mode = self.settings.search
        if mode == "auto":  # hydra-optuna-sweeper's params mean a search; command-line lists alone, a grid
            searched = parse_search_space([], self.settings.params).sweeps if self.settings.params else ()
            mode = "optuna" if searched or not space.has_grid else "grid"
        name = sweep_name(self.settings, space, mode)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        parent = self._start_parent(name, space, mode)
        try:
            outcomes = self._search(space, mode, name, parent)
            comparisons = self._compare(outcomes)
            if self.settings.confirm_seeds > 0:
                outcomes, comparisons = self._confirm(space, outcomes, comparisons, name, parent)
            self._finish(outcomes, comparisons, parent, name)
        except BaseException as err:
            if self.tracker and parent:
                self.tracker.set_tag(parent, "error", f"{type(err).__name__}: {err}"[:5000])
                self.tracker.set_terminated(parent, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        return outcomes, comparisons

    def _search(self, space: SearchSpace, mode: str, name: str, parent: str | None) -> list[TrialOutcome]:
        if mode == "grid":
            grid = dict(enumerate(space.grid()))
            reused = self._reuse_baselines(space.fixed, grid)
            return reused + self._fit(name, space.fixed, grid, None, parent, name, skip={o.number for o in reused})
        return self._fit(name, space.fixed, None, space, parent, name)

    def _fit(self, experiment: str, fixed: tuple[str, ...], grid: dict[int, dict[str, Any]] | None, space: SearchSpace | None,
             parent: str | None, name: str, skip: set[int] = frozenset()) -> list[TrialOutcome]:
        """Run trials on Ray Tune (restoring the experiment when it exists) and collect their outcomes."""
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

        if grid is not None and not set(grid) - skip:
            return []
        self._init_ray()
        failure_value = -math.inf if self.mode == "max" else math.inf
        storage = str((self.root_dir / (self.settings.storage_path or "ray_results")).resolve())
        job = _Job(self.hydra_context, self.task_function, self.config, Singleton.get_state(), fixed, grid,
                   space.keys if space else (), self.settings.metric, parent, name, failure_value,
                   os.path.join(storage, experiment, "completed"))
        trainable = tune.with_resources(tune.with_parameters(_run_trial, job=job),
                                        {"cpu": self.settings.cpus_per_trial, "gpu": self.settings.gpus_per_trial})
        max_t = int(OmegaConf.select(self.config, "train.epochs", default=100)) + 1
        # Pruning serves searches; a grid is a comparison, and every one of its runs must finish.
        scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=self.settings.grace_period,
                                   reduction_factor=self.settings.reduction_factor)
                     if self.settings.prune and grid is None else FIFOScheduler())
        if grid is not None:
            tune_config = tune.TuneConfig(metric=self.settings.metric, mode=self.mode, scheduler=scheduler,
                                          max_concurrent_trials=self.settings.n_jobs, reuse_actors=True)
            param_space: dict[str, Any] = {"trial": tune.grid_search(sorted(set(grid) - skip))}
        else:
            tune_config = tune.TuneConfig(metric=self.settings.metric, mode=self.mode, scheduler=scheduler,
                                          search_alg=self._optuna_search(space, name), num_samples=self.settings.n_trials,
                                          max_concurrent_trials=self.settings.n_jobs, reuse_actors=True)
            param_space = {}
        run_config = tune.RunConfig(name=experiment, storage_path=storage, verbose=1,
                                    failure_config=tune.FailureConfig(max_failures=self.settings.max_retries))
        path = os.path.join(storage, experiment)
        if self.settings.resume and tune.Tuner.can_restore(path):
            log.info("resuming sweep %s from %s: finished trials are kept", experiment, path)
            tuner = tune.Tuner.restore(path, trainable=trainable, param_space=param_space or None, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
        results = tuner.fit()
        outcomes = []
        for index, result in enumerate(results):
            metrics = result.metrics or {}
            if grid is not None:
                number = int(result.config["trial"])
                params = grid[number]
            else:
                number, params = int(result.config.get(OPTUNA_NUMBER, index)), {k: result.config[k] for k in space.keys}
            state = metrics.get("trial_state")
            if result.error is not None:
                state, error = FAILED, f"{type(result.error).__name__}: {result.error}"
            else:
                state, error = (state if state in (FINISHED, FAILED) else PRUNED), metrics.get("error")
            objective = metrics.get(self.settings.metric) if state != FAILED else None
            outcomes.append(TrialOutcome(number=number, params=params, state=state, objective=objective,
                                         seed=self._seed(fixed, params), baseline=self.pairing.is_baseline(params), error=error))
        if not self._external_ray():
            ray.shutdown()
        return sorted(outcomes, key=lambda o: o.number)

    def _optuna_storage(self) -> str:
        return self.settings.storage or os.environ.get("OPTUNA_STORAGE") or f"sqlite:///{self.root_dir.resolve() / 'optuna.db'}"

    def _optuna_search(self, space: SearchSpace, name: str) -> Any:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        class StateAwareOptunaSearch(OptunaSearch):
            """Tells Optuna which trials Tune pruned and which failed, and gives trials their Optuna number."""

            def suggest(self, trial_id: str) -> dict | None:
                config = super().suggest(trial_id)
                if isinstance(config, dict):
                    config = {**config, OPTUNA_NUMBER: self._ot_trials[trial_id].number}
                return config

            def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
                state = (result or {}).get("trial_state")
                if error or state == FAILED:
                    super().on_trial_complete(trial_id, None, error=True)
                elif state != FINISHED:
                    super().on_trial_complete(trial_id, None, error=False)  # no final value: PRUNED
                else:
                    super().on_trial_complete(trial_id, result, error)

        sampler = instantiate(self.settings.sampler) if self.settings.sampler else None
        storage = optuna.storages.RDBStorage(self._optuna_storage())
        return StateAwareOptunaSearch(space=space.distributions(), metric=self.settings.metric, mode=self.mode,
                                      sampler=sampler, study_name=name, storage=storage)

    # -- baselines and comparison ---------------------------------------------------------------

    def _seed(self, fixed: tuple[str, ...], params: dict[str, Any]) -> int | None:
        """The trial's value of the pairing key: swept, fixed on the command line, or the task's default."""
        key = self.pairing.pair_by
        if key in params:
            return int(params[key])
        for line in fixed:
            if line.startswith(f"{key}="):
                return int(line.split("=", 1)[1])
        seed = OmegaConf.select(self.config, key, default=None)
        return int(seed) if seed is not None else None

    def _reuse_baselines(self, fixed: tuple[str, ...], grid: dict[int, dict[str, Any]]) -> list[TrialOutcome]:
        """Baseline grid points that already ran with the identical config come from MLflow instead of a new run."""
        if self.tracker is None or self.pairing.baseline is None:
            return []
        reused = []
        for number, params in grid.items():
            run = self._finished_baseline(fixed, params) if self.pairing.is_baseline(params) else None
            if run is None:
                continue
            reused.append(TrialOutcome(number=number, params=params, state=REUSED,
                                       objective=run.data.metrics.get(self.settings.metric),
                                       seed=self._seed(fixed, params), baseline=True, mlflow_run_id=run.info.run_id))
            log.info("baseline %s reused from MLflow run %s", params, run.info.run_id)
        return reused

    def _finished_baseline(self, fixed: tuple[str, ...], params: dict[str, Any]) -> Any:
        overrides = [*fixed, *(f"{k}={v}" for k, v in params.items())]
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        key = self.pairing.pair_key(config, code_version())
        query = f"tags.pair_key = '{key}' and tags.baseline = 'true' and attributes.status = 'FINISHED'"
        runs = self.tracker.search_runs([self.experiment_id], filter_string=query, max_results=1,
                                        order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def _compare(self, outcomes: list[TrialOutcome]) -> list[PairedComparison]:
        """Each setting (the swept values but the seed) against the baseline, seed by seed."""
        baseline = {o.seed: o.objective for o in outcomes if o.baseline and o.objective is not None and o.state in (FINISHED, REUSED)}
        if not baseline:
            return []
        settings: dict[str, dict[int, float]] = {}
        for o in outcomes:
            if o.baseline or o.objective is None or o.state != FINISHED or o.seed is None:
                continue
            label = self.pairing.setting_label(o.params)
            settings.setdefault(label, {})[o.seed] = o.objective
        return [compare(label, values, baseline) for label, values in settings.items() if set(values) & set(baseline)]

    def _best_params(self, outcomes: list[TrialOutcome], comparisons: list[PairedComparison]) -> dict[str, Any] | None:
        """The best setting's swept values (without the seed): by paired difference, else by objective."""
        sign = 1 if self.mode == "max" else -1
        if comparisons:
            best = max(comparisons, key=lambda c: sign * c.mean).setting
            return next(o.params for o in outcomes if not o.baseline and self.pairing.setting_label(o.params) == best)
        finished = [o for o in outcomes if o.state == FINISHED and not o.baseline and o.objective is not None]
        return max(finished, key=lambda o: sign * o.objective).params if finished else None

    def _confirm(self, space: SearchSpace, outcomes: list[TrialOutcome], comparisons: list[PairedComparison], name: str,
                 parent: str | None) -> tuple[list[TrialOutcome], list[PairedComparison]]:
        """Re-run the best setting and the baseline on ``confirm_seeds`` fresh seeds, paired: one noisy trial is no evidence."""
        params = self._best_params(outcomes, comparisons)
        if params is None:
            log.warning("no finished trial to confirm")
            return outcomes, comparisons
        used = {o.seed for o in outcomes if o.seed is not None}
        start = max(used) + 1 if used else 0
        seeds = list(range(start, start + self.settings.confirm_seeds))
        key = self.pairing.pair_by
        setting = {k: v for k, v in params.items() if k != key}
        points = [{**setting, key: s} for s in seeds]
        if self.pairing.baseline_key:
            points += [{self.pairing.baseline_key: self.pairing.baseline_value, key: s} for s in seeds]
        first = max(o.number for o in outcomes) + 1  # confirmation trials continue the sweep's numbering
        grid = dict(enumerate(points, start=first))
        fixed = tuple(line for line in space.fixed if not line.startswith(f"{key}="))
        log.info("confirming %s against the baseline on seeds %s", setting, seeds)
        reused = self._reuse_baselines(fixed, grid)
        confirmed = reused + self._fit(f"{name}-confirm", fixed, grid, None, parent, name, skip={o.number for o in reused})
        return outcomes + confirmed, comparisons + self._compare(confirmed)

    # -- MLflow parent run ------------------------------------------------------------------------

    def _parent_tracker(self) -> Any:
        if OmegaConf.select(self.config, "mlflow.experiment_name", default=None) is None:
            return None  # a task without MLflow settings: no parent run
        uri = OmegaConf.select(self.config, "mlflow.tracking_uri", default=None) or default_tracking_uri(self.root_dir)
        client = tracking_client(uri)
        self.experiment_id = experiment_id(client, self.config.mlflow.experiment_name)
        return client

    def _start_parent(self, name: str, space: SearchSpace, mode: str) -> str | None:
        if self.tracker is None:
            return None
        existing = self.tracker.search_runs([self.experiment_id], filter_string=f"tags.sweep_parent = '{name}'", max_results=1)
        if existing and self.settings.resume:
            run_id = existing[0].info.run_id
            self.tracker.update_run(run_id, status="RUNNING")
            return run_id
        run = self.tracker.create_run(self.experiment_id, run_name=name, tags={"sweep_parent": name, "search": mode})
        params = {"search": mode, "metric": self.settings.metric, "direction": self.settings.direction, "n_trials": self.settings.n_trials,
                  "n_jobs": self.settings.n_jobs, "baseline": self.settings.baseline, "study_name": name,
                  **{f"space.{o.get_key_element()}": o.input_line.split("=", 1)[1] for o in space.sweeps},
                  **{f"fixed.{line.split('=', 1)[0].lstrip('+~')}": line.split("=", 1)[1] for line in space.fixed}}
        for key, value in params.items():
            self.tracker.log_param(run.info.run_id, key, str(value)[:6000])
        return run.info.run_id

    def _finish(self, outcomes: list[TrialOutcome], comparisons: list[PairedComparison], parent: str | None, name: str) -> None:
        counts = {s: sum(o.state == s for o in outcomes) for s in (FINISHED, PRUNED, FAILED, REUSED)}
        table = format_table(comparisons, self.settings.metric) if comparisons else "(no setting could be paired with the baseline)"
        log.info("sweep done: %s", counts)
        print(f"\n{table}\n")
        if self.tracker:
            print(f"Browse the runs: mlflow ui --backend-store-uri {self.tracker.tracking_uri}  (parent run {parent})\n")
        if self.tracker and parent:
            self._attach_runs(outcomes, parent)
            for outcome in outcomes:
                if outcome.mlflow_run_id and outcome.state in (PRUNED, FAILED, FINISHED):
                    self.tracker.set_tag(outcome.mlflow_run_id, "trial_state", outcome.state)
                    if outcome.state == PRUNED:
                        self.tracker.set_terminated(outcome.mlflow_run_id, "KILLED")
            for state, count in counts.items():
                self.tracker.log_metric(parent, f"trials_{state}", count)
            for c in comparisons:
                slug = "".join(ch if ch.isalnum() or ch in "._-/" else "_" for ch in c.setting)[:200]
                for key, value in (("diff", c.mean), ("diff_t_low", c.t_low), ("diff_t_high", c.t_high),
                                   ("diff_boot_low", c.boot_low), ("diff_boot_high", c.boot_high), ("n", c.n)):
                    if not math.isnan(value):
                        self.tracker.log_metric(parent, f"{key}/{slug}", value)
            self.tracker.log_text(parent, table, "comparison.txt")
            self.tracker.log_dict(parent, {"trials": [o.__dict__ for o in outcomes], "comparisons": [c.__dict__ for c in comparisons]},
                                  "sweep.json")
            self._dashboard(parent, name)
            self.tracker.set_terminated(parent, "FINISHED")
        total = len([o for o in outcomes if o.state != REUSED])
        if total and counts[FAILED] / total > self.settings.max_failure_rate:
            raise RuntimeError(f"{counts[FAILED]} of {total} trials failed, above hydra.sweeper.max_failure_rate="
                               f"{self.settings.max_failure_rate}: see the trials' errors above")

    def _attach_runs(self, outcomes: list[TrialOutcome], parent: str) -> None:
        """Each trial's MLflow run, found by its ``trial`` tag among the parent's children (the latest, if it ran twice)."""
        children = self.tracker.search_runs([self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                            max_results=50_000, order_by=["attributes.start_time DESC"])
        runs: dict[str, str] = {}
        for run in children:
            runs.setdefault(run.data.tags.get("trial", ""), run.info.run_id)
        for outcome in outcomes:
            if outcome.state != REUSED:
                outcome.mlflow_run_id = runs.get(str(outcome.number))

    def _dashboard(self, parent: str, name: str) -> None:
        """Build the sweep's dashboard and log it on the parent run; a failure is reported, the sweep's records stay."""
        from ghm.dashboard.page import build_dashboard

        try:
            path = build_dashboard(self.config.mlflow.experiment_name, name, tracking_uri=self.tracker.tracking_uri,
                                   optuna_storage=self._optuna_storage(), output=Path(self.config.hydra.sweep.dir) / "dashboard.html")
            self.tracker.log_artifact(parent, str(path))
        except Exception as err:
            log.exception("the sweep's dashboard could not be built")
            self.tracker.set_tag(parent, "dashboard_error", f"{type(err).__name__}: {err}"[:5000])
            return
        print(f"Dashboard: {path.resolve()}  (also the artifact dashboard.html of parent run {parent})\n")

    # -- Ray ---------------------------------------------------------------------------------------

    def _external_ray(self) -> bool:
        return bool(self.settings.ray_address or os.environ.get("RAY_ADDRESS"))

    def _init_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        if self._external_ray():
            ray.init(address=self.settings.ray_address or os.environ["RAY_ADDRESS"])
        else:
            # "local": a new instance even where a cluster started by `ray start` runs on this machine.
            ray.init(address="local", include_dashboard=False, log_to_driver=True, configure_logging=False)

