"""MLflow tracking of one run: params, tags, per-epoch metrics, figures, evaluation, status.

A run that raises ends FAILED with its error (KILLED on Ctrl-C or ``kill``). Tags found in
``MLFLOW_RUN_CONTEXT`` (MLflow's convention for tags given by the environment) are set on a new
run: that is how a sweep's trial nests its run under the sweep's parent run.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from matplotlib.figure import Figure
from mlflow.entities import RunStatus
from mlflow.environment_variables import MLFLOW_RUN_CONTEXT
from omegaconf import DictConfig, OmegaConf

from ghm.tracking.store import experiment_id, tracking_client


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config to MLflow params: ``{"loss.cls.bins": "30", ...}``."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


class RunTracker:
    """One MLflow run, opened by :meth:`start` (or re-opened when resuming) and closed with its status."""

    def __init__(self, tracking_uri: str, experiment_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = tracking_client(tracking_uri)
        self.experiment_id = experiment_id(self.client, experiment_name)
        self.run_id: str | None = None

    @contextmanager
    def start(self, *, run_id: str | None, run_name: str | None, tags: dict[str, str], config: DictConfig) -> Iterator[str]:
        """Create (or resume) the run; on exit mark it FINISHED, or FAILED with the error, and re-raise."""
        if run_id is None:
            all_tags = {**context_tags(), **tags}
            if run_name:  # the run's own name wins over the one its context suggests
                all_tags.pop("mlflow.runName", None)
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
            run_id = run.info.run_id
            self.run_id = run_id
            self.client.log_batch(run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in
                                                   flatten(OmegaConf.to_container(config, resolve=True)).items()])
            self.client.log_text(run_id, OmegaConf.to_yaml(config, resolve=True), "config.yaml")
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        try:
            yield run_id
        except BaseException as err:
            self.client.set_tag(run_id, "error", f"{type(err).__name__}: {err}"[:5000])
            self.client.log_text(run_id, "".join(traceback.format_exception(err)), "error.txt")
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            self.client.set_terminated(run_id, status=status)
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.client.log_batch(self._run(), metrics=[mlflow.entities.Metric(k, float(v), _now_ms(), step)
                                                    for k, v in metrics.items()])

    def log_figure(self, figure: Figure, path: str) -> None:
        self.client.log_figure(self._run(), figure, path)

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self._run(), text, path)

    def log_dict(self, data: dict[str, Any], path: str) -> None:
        self.client.log_dict(self._run(), data, path)

    def _run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("no MLflow run is open: call start() first")
        return self.run_id


def context_tags() -> dict[str, str]:
    """The tags ``MLFLOW_RUN_CONTEXT`` gives new runs (a JSON object; none when unset)."""
    return json.loads(MLFLOW_RUN_CONTEXT.get()) if MLFLOW_RUN_CONTEXT.defined else {}


def _now_ms() -> int:
    return int(time.time() * 1000)


def record_finished_run(tracking_uri: str, experiment_name: str, *, identity: tuple[str, str], run_name: str,
                        params: Mapping[str, Any], metrics: Mapping[str, float], curves: Mapping[str, list[float]],
                        artifacts: list[Path]) -> str:
    """A FINISHED run recording work done outside any run (e.g. a cached pretraining), created once per store.

    ``identity`` is a (tag, value) pair naming the work; a run already carrying it is returned as
    is. Callers serialise concurrent calls (the work's own lock), so two trials never record it twice.
    """
    client = tracking_client(tracking_uri)
    experiment = experiment_id(client, experiment_name)
    tag, value = identity
    found = client.search_runs([experiment], filter_string=f"tags.{tag} = '{value}'", max_results=1)
    if found:
        return found[0].info.run_id
    run_id = client.create_run(experiment, run_name=run_name, tags={tag: value}).info.run_id
    now = _now_ms()
    client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items()],
                     metrics=[mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()]
                     + [mlflow.entities.Metric(k, float(v), now, step) for k, values in curves.items()
                        for step, v in enumerate(values, start=1)])
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status="FINISHED")
    return run_id
