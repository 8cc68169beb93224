"""What a dashboard shows of a sweep, read from its parent run: the sweep record (``sweep.json``) and its trials' runs.

The record (:class:`~ghm.comparison.record.SweepRecord`) says which trials ran, in which state, and
how they pair; its pairing declaration groups the trials into settings (:class:`Setting`).
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from ghm.comparison.record import FINISHED, REUSED, SweepRecord
from ghm.comparison.settings import setting_of
from ghm.comparison.statistics import paired_t_interval


class DashboardError(RuntimeError):
    """The sweep or experiment asked for is not in the tracking store."""


@dataclass
class Setting:
    """One swept setting (the trial parameters but the pairing key) and what its trials gave."""

    label: str
    baseline: bool
    objectives: dict[int, float] = field(default_factory=dict)  # seed -> final objective
    runs: list[str] = field(default_factory=list)  # MLflow run ids of its finished trials
    states: dict[str, int] = field(default_factory=dict)

    def interval(self) -> tuple[float, float, float]:
        """Mean over seeds and its 95% t interval (NaN bounds with one seed)."""
        values = list(self.objectives.values())
        return (statistics.fmean(values) if values else math.nan, *paired_t_interval(values))


@dataclass
class SweepView:
    """A sweep as its dashboard sees it: the record, where it lives, and its settings."""

    record: SweepRecord
    experiment: str
    parent_run_id: str
    settings: dict[str, Setting]


def load_sweep(client: MlflowClient, experiment: str, sweep: str | None = None) -> SweepView:
    """The named sweep of ``experiment`` (its ``sweep_parent`` tag), or its latest one."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise DashboardError(f"no MLflow experiment {experiment!r} at {client.tracking_uri}")
    query = f"tags.sweep_parent = '{sweep}'" if sweep else "tags.sweep_parent != ''"
    parents = client.search_runs([found.experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"])
    if not parents:
        what = f"sweep {sweep!r}" if sweep else "sweep"
        raise DashboardError(f"no {what} in experiment {experiment!r} at {client.tracking_uri}")
    parent = parents[0]
    legacy = {**parent.data.params, "name": parent.data.tags["sweep_parent"], "search": parent.data.tags.get("search", "grid")}
    record = SweepRecord.from_json(_download_json(client, parent.info.run_id, "sweep.json"), legacy)
    return SweepView(record=record, experiment=experiment, parent_run_id=parent.info.run_id, settings=settings_of(record))


def settings_of(record: SweepRecord) -> dict[str, Setting]:
    """The record's trials grouped by setting, with each setting's final objective per seed.

    A tuned comparison's search trials are no settings of the verdict (its arms' tuning shows them): left out.
    """
    settings: dict[str, Setting] = {}
    for trial in record.trials:
        if trial.search_trial is not None:
            continue
        label = setting_of(trial, record.pairing)
        setting = settings.setdefault(label, Setting(label, trial.baseline))
        setting.states[trial.state] = setting.states.get(trial.state, 0) + 1
        if trial.state in (FINISHED, REUSED) and trial.objective is not None and trial.seed is not None:
            setting.objectives[trial.seed] = trial.objective
            if trial.mlflow_run_id:
                setting.runs.append(trial.mlflow_run_id)
    return settings


def _download_json(client: MlflowClient, run_id: str, path: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception as err:
            raise DashboardError(f"the sweep's parent run {run_id} has no {path} (is the sweep still running?): {err}") from err
        return json.loads(Path(local).read_text())
