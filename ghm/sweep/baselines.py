"""Trials that already ran: a baseline trial whose config ran to the end before is taken from MLflow, not retrained
(every grid point with ``hydra.sweeper.reuse=finished``).

A finished run, in any experiment of the store, tagged with the trial's ``config_key`` (the same
config, loss and seed included, and code version; :meth:`~ghm.comparison.pairing.Pairing.config_key`)
stands for the trial, as a ``reused`` trial: the paper's tables share their focal-loss runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from ghm.comparison.pairing import Pairing
from ghm.comparison.record import REUSED, TrialRecord

if TYPE_CHECKING:
    from ghm.sweep.parent_run import ParentRun
from ghm.tracking.version import code_version

log = logging.getLogger(__name__)


def reuse_finished(points: dict[int, dict[str, Any]], fixed: tuple[str, ...], pairing: Pairing, parent: ParentRun,
                   compose: Callable[[list[str]], DictConfig], metric: str, seed_of: Callable[[dict[str, Any]], int | None],
                   baselines_only: bool = True) -> list[TrialRecord]:
    """The points of a grid (its baseline points only, by default) that a finished run of the identical config answers."""
    reused = []
    experiments = [e.experiment_id for e in parent.client.search_experiments()]  # a baseline run of any experiment counts
    for number, params in points.items():
        baseline = pairing.is_baseline(params, fixed)
        if baselines_only and not baseline:
            continue
        key = pairing.config_key(compose([*fixed, *(f"{k}={v}" for k, v in params.items())]), code_version())
        query = f"tags.config_key = '{key}' and attributes.status = 'FINISHED'"
        runs = parent.client.search_runs(experiments, filter_string=query, max_results=1, order_by=["attributes.start_time DESC"])
        if runs:
            reused.append(TrialRecord(number=number, params=params, state=REUSED, objective=runs[0].data.metrics.get(metric),
                                      seed=seed_of(params), baseline=baseline, mlflow_run_id=runs[0].info.run_id))
            log.info("%s %s reused from MLflow run %s", "baseline" if baseline else "trial", params, runs[0].info.run_id)
    return reused
