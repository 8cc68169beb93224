"""The MLflow store: where runs go, and a client whose embedded store is created safely by concurrent runs.

Runs go to ``MLFLOW_TRACKING_URI`` when it is set (a cluster's tracking server), else to an
embedded SQLite store in the launching working directory (``mlflow.db``, artifacts under
``mlartifacts/``), which ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` browses; the
config's ``mlflow.tracking_uri`` overrides both. A fresh SQLite store is created by MLflow's schema
migrations, which fail when two processes run them at once: :func:`tracking_client` lets one
process at a time make the first connection (a lock file beside the database).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # MLflow's import costs a second: a sweep that only needs the store's address does not pay for it
    from mlflow.tracking import MlflowClient


def default_tracking_uri(root_dir: str | os.PathLike[str]) -> str:
    """MLflow's own convention first (``MLFLOW_TRACKING_URI``, set on cluster nodes), else ``mlflow.db`` in ``root_dir``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root_dir).resolve() / 'mlflow.db'}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of an embedded SQLite store, ``None`` for any other store."""
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def tracking_client(tracking_uri: str) -> MlflowClient:
    """A client of ``tracking_uri``, the embedded store created (or migrated) by one process at a time."""
    from mlflow.tracking import MlflowClient

    database = sqlite_path(tracking_uri)
    if database is None:
        return MlflowClient(tracking_uri)
    database.parent.mkdir(parents=True, exist_ok=True)
    with database.with_name(database.name + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        client = MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)  # the store exists (created, migrated) before the lock is released
    return client


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment called ``name``, created on first use (with its artifacts beside an embedded store)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    database = sqlite_path(client.tracking_uri)
    location = (database.parent / "mlartifacts" / name).as_uri() if database else None
    try:  # the kind makes MLflow's UI open the experiment on its training runs (not its GenAI traces)
        return client.create_experiment(name, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"})
    except MlflowException:  # created meanwhile by a concurrent run
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id
