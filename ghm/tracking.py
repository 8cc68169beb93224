"""MLflow tracking of one training run: params, tags, per-epoch metrics, figures, evaluation, status.

By default runs go to ``MLFLOW_TRACKING_URI`` when it is set (a cluster's tracking server), else
to an embedded store in the project directory (``mlflow.db`` with artifacts under ``mlartifacts/``),
which ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` browses; ``mlflow.tracking_uri`` overrides both.
A run that raises ends FAILED with its error.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from matplotlib.figure import Figure
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

PROJECT_DIR = Path(__file__).resolve().parents[1]


def default_tracking_uri() -> str:
    """MLflow's own convention first (``MLFLOW_TRACKING_URI``, set on cluster nodes), else the embedded store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"


def code_version() -> str:
    """The git commit of the project, with ``-dirty`` for uncommitted changes; ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_DIR,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def pair_key(config: DictConfig) -> str:
    """What a candidate and its baseline share: the config but the loss, tracking and paths, and the code version."""
    container = OmegaConf.to_container(config, resolve=False)
    for key in ("loss", "mlflow", "checkpoint_dir", "hydra"):
        container.pop(key, None)
    payload = json.dumps({"config": container, "code": code_version()}, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


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


def experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The experiment called ``name``, created on first use (with artifacts beside a local store)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (PROJECT_DIR / "mlartifacts" / name).as_uri() if tracking_uri.startswith("sqlite:///") else None
    try:  # the kind makes MLflow's UI open the experiment on its training runs (not its GenAI traces)
        return client.create_experiment(name, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"})
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class RunTracker:
    """One MLflow run, opened by :meth:`start` (or re-opened when resuming) and closed with its status."""

    def __init__(self, tracking_uri: str | None, experiment_name: str) -> None:
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.client = MlflowClient(self.tracking_uri)
        self.experiment_id = experiment_id(self.client, experiment_name, self.tracking_uri)
        self.run_id: str | None = None

    @contextmanager
    def start(self, *, run_id: str | None, run_name: str | None, tags: dict[str, str], config: DictConfig,
              parent_run_id: str | None = None) -> Iterator[str]:
        """Create (or resume) the run; on exit mark it FINISHED, or FAILED with the error, and re-raise."""
        if run_id is None:
            all_tags = dict(tags)
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
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


def _now_ms() -> int:
    return int(time.time() * 1000)
