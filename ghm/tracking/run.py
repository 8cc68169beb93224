"""MLflow tracking of one run: params, tags, datasets, per-epoch metrics, system metrics, figures, evaluation, status.

A run that raises ends FAILED with its error (KILLED on Ctrl-C or ``kill``). Tags found in
``MLFLOW_RUN_CONTEXT`` (MLflow's convention for tags given by the environment) are set on a new
run: that is how a sweep's trial nests its run under the sweep's parent run. A new run gets
MLflow's system tags (:func:`ghm.tracking.version.source_tags`) and its datasets as inputs. While
it trains the run is also MLflow's active run (``mlflow.start_run(run_id=...)``), so that MLflow's
own system-metrics monitor samples it and ``mlflow.pyfunc.log_model`` links the detector to it.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from matplotlib.figure import Figure
from mlflow.data.dataset import Dataset
from mlflow.environment_variables import MLFLOW_RUN_CONTEXT
from omegaconf import DictConfig, OmegaConf

from ghm.tracking.store import experiment_id, tracking_client
from ghm.tracking.version import source_tags


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
    def start(self, *, run_id: str | None, run_name: str | None, tags: dict[str, str], config: DictConfig,
              datasets: Mapping[str, Dataset] | None = None, system_metrics: float | None = None) -> Iterator[str]:
        """Create (or resume) the run; on exit mark it FINISHED, or FAILED with the error, and re-raise.

        ``datasets`` are logged as inputs of a new run, by context (``train``, ``val``); ``system_metrics`` is
        the sampling interval in seconds of MLflow's system metrics (None: not sampled).
        """
        new = run_id is None
        if new:
            all_tags = {**source_tags(), **context_tags(), **tags}
            if run_name:  # the run's own name wins over the one its context suggests
                all_tags.pop("mlflow.runName", None)
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in
                                                   flatten(OmegaConf.to_container(config, resolve=True)).items()])
            self.client.log_text(run_id, OmegaConf.to_yaml(config, resolve=True), "config.yaml")
        self.run_id = run_id
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start and stop are no news; its failures are
        mlflow.set_tracking_uri(self.tracking_uri)  # the store of MLflow's fluent calls below, the monitor's and the model's
        if system_metrics is not None:
            mlflow.set_system_metrics_sampling_interval(system_metrics)
        mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics is not None)  # sets the run RUNNING (again)
        try:
            if new:
                for context, dataset in (datasets or {}).items():
                    _log_input(dataset, context)
            yield run_id
        except BaseException as err:
            self.client.set_tag(run_id, "error", f"{type(err).__name__}: {err}"[:5000])
            self.client.log_text(run_id, "".join(traceback.format_exception(err)), "error.txt")
            mlflow.end_run("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        mlflow.end_run("FINISHED")

    def logged_models(self) -> list[str]:
        """The ids of the models the run has logged (``mlflow.pyfunc.log_model`` while it was active)."""
        outputs = self.client.get_run(self._run()).outputs
        return [m.model_id for m in outputs.model_outputs] if outputs else []

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.client.log_batch(self._run(), metrics=[mlflow.entities.Metric(k, float(v), _now_ms(), step)
                                                    for k, v in metrics.items()])

    def log_missing_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Those of ``metrics`` that the run has not logged at ``step`` (a resumed run's last checkpointed epoch)."""
        run_id = self._run()
        missing = {k: v for k, v in metrics.items() if all(m.step != step for m in self.client.get_metric_history(run_id, k))}
        if missing:
            self.log_metrics(missing, step)

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


def _log_input(dataset: Dataset, context: str) -> None:
    """``mlflow.log_input``, once more when a concurrent run of the experiment inserted the same dataset first.

    MLflow's store looks the dataset up, then inserts it: two trials starting together on the same
    data can both miss it, and the second insert fails on the store's unique key. The dataset exists
    then, and the second attempt links this run to it.
    """
    try:
        mlflow.log_input(dataset, context=context)
    except mlflow.exceptions.MlflowException:
        mlflow.log_input(dataset, context=context)


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
    run_id = client.create_run(experiment, run_name=run_name, tags={**source_tags(), tag: value}).info.run_id
    now = _now_ms()
    client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items()],
                     metrics=[mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()]
                     + [mlflow.entities.Metric(k, float(v), now, step) for k, values in curves.items()
                        for step, v in enumerate(values, start=1)])
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status="FINISHED")
    return run_id
