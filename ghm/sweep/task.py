"""The task's side of a sweep: how a Hydra task run as a trial reports its epochs.

A trial runs its task with ``GHM_SWEEP_TRIAL`` set to the trial's number (and MLflow's
``MLFLOW_RUN_CONTEXT`` carrying the tags that nest the task's MLflow run under the sweep's parent
run, :func:`trial_tags`); :func:`report_epoch` then reports through Ray Tune's session, so schedulers such as ASHA
can stop the trial early. Outside a sweep both do nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

TRIAL_ENV = "GHM_SWEEP_TRIAL"


def in_trial() -> bool:
    """Whether this process runs its task as a sweep's trial."""
    return TRIAL_ENV in os.environ


def report_epoch(epoch: int, metrics: Mapping[str, float]) -> None:
    """Report one epoch's metrics to the sweep running this task (a no-op outside a sweep)."""
    if in_trial():
        from ray import tune

        tune.report({**metrics, "epoch": epoch})


def trial_tags(sweep: str, number: int, params: dict[str, Any], parent_run_id: str | None) -> dict[str, str]:
    """The tags of a trial's MLflow run: its sweep, number and swept values, named after what it tries in MLflow's UI."""
    tags = {"sweep": sweep, "trial": str(number), **{f"param.{k}": str(v) for k, v in params.items()},
            "mlflow.runName": f"{number}: " + (" ".join(f"{k}={v}" for k, v in params.items()) or "trial")}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return tags
