"""The sweep's MLflow parent run: its definition, its trials' runs nested under it, the comparison and the record.

Trials nest their runs under it through MLflow's ``MLFLOW_RUN_CONTEXT`` (:func:`ghm.sweep.task.trial_tags`); at
the end it gets each trial's state as a tag on the trial's run, the trial counts and the paired
differences as metrics (a tuned comparison's tuning curves too),
``comparison.txt``, ``sweep.json`` (the :class:`~ghm.comparison.record.SweepRecord`)
and ``dashboard.html``. A resumed sweep continues its parent run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ghm.comparison.record import FAILED, FINISHED, PRUNED, REUSED, STATES, SweepRecord, TrialRecord
from ghm.sweep.config import TrackingSettings
from ghm.tracking.store import default_tracking_uri, experiment_id, tracking_client
from ghm.tracking.version import source_tags


def metric_slug(setting: str) -> str:
    """A setting's label as part of an MLflow metric name (``diff/loss_ghm``)."""
    return "".join(ch if ch.isalnum() or ch in "._-/" else "_" for ch in setting)[:200]


class ParentRun:
    """One sweep's parent run in the experiment the task declares (``hydra.sweeper.mlflow``)."""

    def __init__(self, client: MlflowClient, experiment_name: str) -> None:
        self.client = client
        self.experiment_name = experiment_name
        self.experiment_id = experiment_id(client, experiment_name)
        self.run_id: str | None = None

    @classmethod
    def of(cls, settings: TrackingSettings, root_dir: Path) -> ParentRun | None:
        """The parent run's place, or None for a task that declares no MLflow experiment."""
        if settings.experiment_name is None:
            return None
        return cls(tracking_client(settings.tracking_uri or default_tracking_uri(root_dir)), settings.experiment_name)

    @property
    def tracking_uri(self) -> str:
        return self.client.tracking_uri

    def exists(self, name: str) -> bool:
        """Whether a sweep named ``name`` has a parent run in the experiment."""
        return bool(self.client.search_runs([self.experiment_id], filter_string=f"tags.sweep_parent = '{name}'", max_results=1))

    def start(self, name: str, search: str, params: dict[str, Any], resume: bool) -> str:
        """Create the run named after the sweep, or continue the one a resumed sweep left."""
        existing = self.client.search_runs([self.experiment_id], filter_string=f"tags.sweep_parent = '{name}'", max_results=1)
        if existing and resume:
            self.run_id = existing[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return self.run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={**source_tags(), "sweep_parent": name, "search": search})
        self.run_id = run.info.run_id
        for key, value in params.items():
            self.client.log_param(self.run_id, key, str(value)[:6000])
        return self.run_id

    def attach_runs(self, trials: list[TrialRecord]) -> None:
        """Each trial's MLflow run, found by its ``trial`` tag among the children.

        A trial that ran again after an interruption (a killed sweep, a dead worker) without resuming its
        run has an older, unfinished run: that attempt is deleted, so each trial has one run. A run still
        RUNNING now, when every trial has ended, lost its process to the interruption: it ends KILLED.
        """
        children = self.client.search_runs([self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'",
                                           max_results=50_000, order_by=["attributes.start_time DESC"])
        runs: dict[str, str] = {}
        for run in children:
            trial = run.data.tags.get("trial", "")
            if trial in runs:
                self.client.delete_run(run.info.run_id)
                continue
            runs[trial] = run.info.run_id
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "KILLED")
        for trial in trials:
            if trial.state != REUSED:
                trial.mlflow_run_id = runs.get(str(trial.number))

    def finish(self, record: SweepRecord, table: str) -> None:
        """Record the outcome: trial states on their runs, counts and differences as metrics, the table and sweep.json."""
        for trial in record.trials:
            if trial.mlflow_run_id and trial.state in (PRUNED, FAILED, FINISHED):
                self.client.set_tag(trial.mlflow_run_id, "trial_state", trial.state)
                if trial.state == PRUNED:
                    self.client.set_terminated(trial.mlflow_run_id, "KILLED")
        for state in STATES:
            self.client.log_metric(self.run_id, f"trials_{state}", sum(t.state == state for t in record.trials))
        for c in record.comparisons:
            for key, value in (("diff", c.mean), ("diff_t_low", c.t_low), ("diff_t_high", c.t_high), ("diff_boot_low", c.boot_low),
                               ("diff_boot_high", c.boot_high), ("n", c.n)):
                if not math.isnan(value):
                    self.client.log_metric(self.run_id, f"{key}/{metric_slug(c.setting)}", value)
        for arm in record.tuning:  # each arm's tuning curve: MLflow's UI charts it against the search trial
            curve = [Metric(f"tuning_best_so_far/{metric_slug(arm.label)}", value, 0, step)
                     for step, value in enumerate(arm.curve, start=1) if value is not None]
            if curve:
                self.client.log_batch(self.run_id, metrics=curve)
        self.client.log_text(self.run_id, table, "comparison.txt")
        self.client.log_dict(self.run_id, record.to_json(), "sweep.json")

    def log_optimization_results(self, results: dict[str, Any]) -> None:
        """hydra-optuna-sweeper's results: the best value (or the Pareto front's size) as metrics, the file as an artifact."""
        if "best_value" in results:
            self.client.log_metric(self.run_id, "best_value", float(results["best_value"]))
        else:
            self.client.log_metric(self.run_id, "pareto_solutions", len(results["solutions"]))
        self.client.log_dict(self.run_id, results, "optimization_results.yaml")

    def log_dashboard(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def note_dashboard_error(self, err: Exception) -> None:
        """A dashboard that could not be built is reported on the run; the sweep's records stay."""
        self.client.set_tag(self.run_id, "dashboard_error", f"{type(err).__name__}: {err}"[:5000])

    def end(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, err: BaseException) -> None:
        """The sweep stopped: KILLED on Ctrl-C, else FAILED with the error."""
        self.client.set_tag(self.run_id, "error", f"{type(err).__name__}: {err}"[:5000])
        self.client.set_terminated(self.run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
