"""Trials on Ray Tune, each one a Hydra job of the task: generic over any Hydra task.

Ray Tune schedules the trials (one per CPU or GPU share, a new one as soon as any finishes),
stops unpromising ones early in a prunable search (ASHA on the per-epoch objective the task
reports), retries trials whose worker died, and restores an interrupted sweep from its experiment
folder. In the Ray worker a trial runs its job through Hydra's own launcher
(``hydra/launcher``, Hydra's basic one by default: ``launcher.launch(overrides, initial_job_idx)``),
in the launching working directory, with the environment of :mod:`ghm.sweep.task` (its number, and
``MLFLOW_RUN_CONTEXT``: the tags that nest its MLflow run under the sweep's parent run). What a
trial knows of the task is what the sweeper's settings declare: its metric and its epochs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import traceback
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, env_override
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from ghm.comparison.record import FAILED, FINISHED, PRUNED
from ghm.sweep.config import PrunerSettings, RaySettings
from ghm.sweep.search import Search, TrialResult
from ghm.sweep.task import TRIAL_ENV, trial_tags

log = logging.getLogger(__name__)


_hydra_state_of: dict[str, str] = {}  # in a Ray worker: the job whose Hydra state the worker holds (its state_id)


@dataclass
class TaskJob:
    """The task as a Hydra job: what a Ray worker needs to launch it with a trial's overrides (pickled to the worker)."""

    hydra_context: HydraContext
    task_function: TaskFunction
    config: DictConfig  # the sweep's config
    singleton_state: Any  # Hydra's global state (config store, plugins), as Hydra's own Ray launcher passes it
    fixed: tuple[str, ...]  # the overrides every trial gets
    sweep_dir: str  # hydra.sweep.dir resolved in the driver: the jobs' folders are <sweep_dir>/<number> on every node
    environment: dict[str, str]  # the driver's tracking URI and study storage, which every trial uses
    state_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # names singleton_state: a worker sets it once

    def launch(self, number: int, params: dict[str, Any], environment: dict[str, str]) -> JobReturn:
        """Run the job ``number`` with the swept values ``params`` through Hydra's configured launcher.

        The sweep folder is given resolved (a relative one means the launching directory, which a
        cluster node may not have), and so are the driver's tracking URI and study storage: a node's
        own environment does not decide where a trial's records go.
        """
        with _in_launch_dir(self.config.hydra.runtime.cwd), env_override({**self.environment, **environment}):
            # Once per job in a worker (20 ms a trial otherwise); the later trials run as Hydra's basic launcher runs a sweep's jobs.
            if _hydra_state_of.get("job") != self.state_id:
                Singleton.set_state(self.singleton_state)
                _hydra_state_of["job"] = self.state_id
            launcher = Plugins.instance().instantiate_launcher(hydra_context=self.hydra_context, task_function=self.task_function,
                                                               config=self.config)
            overrides = [*self.fixed, *(f"{k}={v}" for k, v in params.items()), f"hydra.sweep.dir={quoted(self.sweep_dir)}"]
            return launcher.launch([overrides], initial_job_idx=number)[0]


def quoted(value: str) -> str:
    """``value`` as a quoted string of Hydra's override grammar (paths may hold ``=``, spaces, commas)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class TrialSpec:
    """How every trial of one Ray Tune experiment runs and reports (pickled to the workers)."""

    job: TaskJob
    search: Search
    metric: str
    failure_value: float  # reported for a failed trial, the worst value of the objective
    completed_dir: str  # one JSON per finished or failed trial: a resumed sweep never runs those again
    sweep_name: str
    parent_run_id: str | None


def run_trial(tune_config: dict[str, Any], spec: TrialSpec) -> None:
    """The Ray Tune trainable: run the trial's job, report its objective and its state."""
    from ray import tune

    number, params = spec.search.trial(tune_config)
    record = Path(spec.completed_dir) / f"{number}.json"
    if record.is_file():  # finished before the sweep was interrupted: report it again, do not re-run it
        tune.report(json.loads(record.read_text()))
        return
    environment = {TRIAL_ENV: str(number), "MLFLOW_RUN_CONTEXT": json.dumps(trial_tags(spec.sweep_name, number, params,
                                                                                            spec.parent_run_id))}
    result = spec.job.launch(number, params, environment)
    if result.status == JobStatus.COMPLETED:
        final = {spec.metric: float(result.return_value), "trial_state": FINISHED}
    else:  # the task raised: a failed trial, not a worker death, so not retried
        error = result._return_value  # JobReturn.return_value re-raises; the exception itself is the record
        # The traceback travels in the result: the driver prints it with the trial's line. Logged here, it would
        # reach the console only through Ray's log monitor, which a driver that exits right after may outrun.
        final = {spec.metric: spec.failure_value, "trial_state": FAILED, "error": f"{type(error).__name__}: {error}",
                 "traceback": "".join(traceback.format_exception(error))}
    record.parent.mkdir(parents=True, exist_ok=True)
    partial = record.with_suffix(".partial")
    partial.write_text(json.dumps(final))
    os.replace(partial, record)
    tune.report(final)


def run_trials(experiment: str, spec: TrialSpec, *, mode: str, n_jobs: int, ray: RaySettings, pruner: PrunerSettings,
               max_epochs: int | None, storage: Path, resume: bool) -> list[TrialResult]:
    """Run (or, with ``resume``, restore and finish) the Ray Tune experiment ``experiment`` of the search's trials."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), {"cpu": ray.cpus_per_trial, "gpu": ray.gpus_per_trial})
    path = storage / experiment
    if resume and tune.Tuner.can_restore(str(path)):
        log.info("resuming sweep %s from %s: finished trials are kept", experiment, path)
        failed = sorted(int(r.stem) for r in Path(spec.completed_dir).glob("*.json")
                        if json.loads(r.read_text()).get("trial_state") == FAILED)
        if failed:  # a failed trial is a result (a diverged run stays diverged); one whose cause was fixed must be asked for
            log.warning("sweep %s: trials %s failed before and stay failed on resume; once their cause is fixed, run them again "
                        "with hydra.sweeper.resume=false hydra.sweeper.reuse=finished (finished runs are taken from MLflow)",
                        experiment, ", ".join(map(str, failed)))
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        plan = spec.search.plan(spec.metric, mode)
        scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=(max_epochs or 100) + 1, grace_period=pruner.grace_period,
                                   reduction_factor=pruner.reduction_factor)
                     if pruner.enabled and spec.search.prunable else FIFOScheduler())
        tune_config = tune.TuneConfig(metric=spec.metric, mode=mode, scheduler=scheduler, search_alg=plan.search_alg,
                                      num_samples=plan.num_samples, max_concurrent_trials=n_jobs, reuse_actors=True)
        callbacks = [hydra_console(spec, mode), CSVLoggerCallback(), JsonLoggerCallback()]
        run_config = tune.RunConfig(name=experiment, storage_path=str(storage), verbose=ray.verbose, callbacks=callbacks,
                                    failure_config=tune.FailureConfig(max_failures=ray.max_retries))
        tuner = tune.Tuner(trainable, param_space=plan.param_space, tune_config=tune_config, run_config=run_config)
    # Tune's CSV and JSON result files stay (its experiment analysis reads them); its TensorBoard logger goes: MLflow
    # tracks the trials, and tensorboardX would import torch into the driver (4 s of every sweep's start).
    # verbose 0: Tune prints nothing, not even its start-up box (its newer console does).
    environment = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", **({"RAY_AIR_NEW_OUTPUT": "0"} if ray.verbose == 0 else {})}
    with env_override(environment):
        results = tuner.fit()
    return sorted((_result(spec, result) for result in results), key=lambda r: r.number)


def hydra_console(spec: TrialSpec, mode: str) -> Any:
    """A Tune callback that shows the sweep as Hydra's sweepers do (Ray Tune's own tables: ``hydra.sweeper.ray.verbose``).

    ``#3 : loss=ghm seed=1`` when a trial starts, ``#3 : loss=ghm seed=1 -> mAP=0.41 (finished)`` when it
    ends, then one line of progress: finished / running / pruned / failed, and the best so far.
    """
    from ray.tune import Callback

    class HydraConsole(Callback):
        def __init__(self) -> None:
            self.states: dict[int, str] = {}
            self.best: tuple[float, int] | None = None

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            number, params = spec.search.trial(trial.config)
            log.info("#%d : %s", number, _overrides(params))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            number, params = spec.search.trial(trial.config)
            result = trial.last_result or {}
            state = result.get("trial_state") if result.get("trial_state") in (FINISHED, FAILED) else PRUNED
            value = result.get(spec.metric)
            self.states[number] = state
            if state == FINISHED and value is not None and (self.best is None or (value > self.best[0]) == (mode == "max")):
                self.best = (value, number)
            outcome = f"{spec.metric}={value:.6g}" if state != FAILED and value is not None else result.get("error", "")
            log.info("#%d : %s -> %s (%s)", number, _overrides(params), outcome, state)
            if state == FAILED and result.get("traceback"):
                log.error("#%d failed in its task:\n%s", number, result["traceback"].rstrip())
            self._progress(trials, trial)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            number, params = spec.search.trial(trial.config)
            self.states[number] = FAILED
            log.info("#%d : %s -> its worker died more often than retried (failed)", number, _overrides(params))
            self._progress(trials, trial)

        def _progress(self, trials: list, ended: Any) -> None:
            running = sum(t.status == "RUNNING" and t is not ended for t in trials)
            counts = ", ".join(f"{sum(s == state for s in self.states.values())} {state}" for state in (FINISHED, PRUNED, FAILED))
            best = f"; best {spec.metric}={self.best[0]:.6g} (#{self.best[1]})" if self.best else ""
            log.info("progress: %s, %d running%s", counts, running, best)

    return HydraConsole()


def _overrides(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def _result(spec: TrialSpec, result: Any) -> TrialResult:
    number, params = spec.search.trial(result.config)
    metrics = result.metrics or {}
    if result.error is not None:  # the worker died more often than retried
        return TrialResult(number, params, FAILED, None, f"{type(result.error).__name__}: {result.error}")
    state = metrics.get("trial_state")
    state = state if state in (FINISHED, FAILED) else PRUNED  # stopped by the scheduler before its final report
    return TrialResult(number, params, state, metrics.get(spec.metric) if state != FAILED else None, metrics.get("error"))


def failure_value(mode: str) -> float:
    """The worst objective, which a failed trial reports so that schedulers and searchers rank it last."""
    return -math.inf if mode == "max" else math.inf


@contextmanager
def ray_session(settings: RaySettings) -> Iterator[None]:
    """Ray for one sweep, said in one line: the cluster at ``address`` (or ``RAY_ADDRESS``); else this machine's warm
    local head (:mod:`ghm.cluster.local_head`), started if none runs and left for the next sweep; or, with
    ``warm_head: false``, an embedded instance stopped at the end. A session already connected is used as it is."""
    import ray

    address = settings.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        yield
        return
    with ExitStack() as session:
        if address:
            log.info("Ray: the cluster at %s", address)
            ray.init(address=address)
        elif settings.warm_head:
            from ghm.cluster.local_head import WarmHead

            head = WarmHead()
            # The trials see the sweep's environment, as with an embedded Ray (the head's own is an earlier sweep's).
            environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
            record, started = head.acquire(settings.idle_timeout_s)
            log.info("Ray: %s", head.describe(record, started))
            session.enter_context(head.driver_environment())
            ray.init(address=record.address, log_to_driver=True, configure_logging=False, runtime_env={"env_vars": environment})
        else:  # "local": a new instance even where a cluster started by `ray start` runs on this machine
            log.info("Ray: an embedded local instance, stopped when the sweep ends (hydra.sweeper.ray.warm_head=false)")
            ray.init(address="local", include_dashboard=False, log_to_driver=True, configure_logging=False)
        session.callback(ray.shutdown)  # a warm head or a cluster: this driver disconnects, the nodes stay
        yield


@contextmanager
def _in_launch_dir(path: str) -> Iterator[None]:
    """Run the job where the sweep was launched (where the node has that folder), as Hydra's launchers do.

    Ray Tune starts a trial in a folder of its own; the job's relative paths (``hydra.runtime.cwd``,
    the sweep folder, the embedded MLflow store, the dataset cache) mean the launching directory.
    """
    previous = os.getcwd()
    if os.path.isdir(path):
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
