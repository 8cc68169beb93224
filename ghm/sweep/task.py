"""The task's side of a sweep: how a Hydra task run as a trial reports its epochs.

A trial runs its task with ``GHM_SWEEP_TRIAL`` set to the trial's number (and MLflow's
``MLFLOW_RUN_CONTEXT`` carrying the tags that nest the task's MLflow run under the sweep's parent
run); :func:`report_epoch` then reports through Ray Tune's session, so schedulers such as ASHA
can stop the trial early. Outside a sweep both do nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

TRIAL_ENV = "GHM_SWEEP_TRIAL"


def in_trial() -> bool:
    """Whether this process runs its task as a sweep's trial."""
    return TRIAL_ENV in os.environ


def report_epoch(epoch: int, metrics: Mapping[str, float]) -> None:
    """Report one epoch's metrics to the sweep running this task (a no-op outside a sweep)."""
    if in_trial():
        from ray import tune

        tune.report({**metrics, "epoch": epoch})
