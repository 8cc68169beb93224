"""Baselines that already ran: a baseline trial whose config ran to the end before is taken from MLflow, not retrained.

A finished run tagged ``baseline=true`` with the trial's ``pair_key`` (same data, model, schedule,
seed and code version; :meth:`~ghm.comparison.pairing.Pairing.pair_key`) in the sweep's experiment
stands for the trial, as a ``reused`` trial.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from ghm.comparison.pairing import Pairing
from ghm.comparison.record import REUSED, TrialRecord
from ghm.sweep.parent_run import ParentRun
from ghm.tracking.version import code_version

log = logging.getLogger(__name__)


def reuse_baselines(points: dict[int, dict[str, Any]], fixed: tuple[str, ...], pairing: Pairing, parent: ParentRun,
                    compose: Callable[[list[str]], DictConfig], metric: str, seed_of: Callable[[dict[str, Any]], int | None]
                    ) -> list[TrialRecord]:
    """The baseline points of a grid that a finished run of the identical config already answers."""
    reused = []
    for number, params in points.items():
        if not pairing.is_baseline(params):
            continue
        key = pairing.pair_key(compose([*fixed, *(f"{k}={v}" for k, v in params.items())]), code_version())
        query = f"tags.pair_key = '{key}' and tags.baseline = 'true' and attributes.status = 'FINISHED'"
        runs = parent.client.search_runs([parent.experiment_id], filter_string=query, max_results=1,
                                         order_by=["attributes.start_time DESC"])
        if runs:
            reused.append(TrialRecord(number=number, params=params, state=REUSED, objective=runs[0].data.metrics.get(metric),
                                      seed=seed_of(params), baseline=True, mlflow_run_id=runs[0].info.run_id))
            log.info("baseline %s reused from MLflow run %s", params, runs[0].info.run_id)
    return reused
