"""The end of a sweep: the comparison table on the console, the parent run's records, the dashboard, the failure check."""

from __future__ import annotations

import logging
from pathlib import Path

from ghm.comparison.record import FAILED, FINISHED, REUSED, STATES, SweepRecord
from ghm.comparison.regime import Regime
from ghm.comparison.statistics import format_table
from ghm.sweep.parent_run import ParentRun

log = logging.getLogger(__name__)


def report(record: SweepRecord, parent: ParentRun | None, sweep_dir: Path) -> None:
    """Print the comparison; record it, with the dashboard, on the parent run and close it."""
    table = format_table(record.comparisons, record.metric) if record.comparisons else "(no setting could be paired with the baseline)"
    regime = baseline_regime(record, parent)
    if regime:
        table = f"{table}\n{regime.line()}"
    log.info("sweep done: %s", {state: sum(t.state == state for t in record.trials) for state in STATES})
    print(f"\n{table}\n")
    if parent is None:
        return
    print(f"Browse the runs: mlflow ui --backend-store-uri {parent.tracking_uri}  (parent run {parent.run_id})\n")
    parent.finish(record, table)
    _dashboard(parent, record, sweep_dir / "dashboard.html")
    parent.end()


def baseline_regime(record: SweepRecord, parent: ParentRun | None) -> Regime | None:
    """The baseline's final mAP and AP50 per seed, read from its MLflow runs (none without a baseline or tracking)."""
    if record.pairing.baseline is None or parent is None:
        return None
    runs = {t.seed: t.mlflow_run_id for t in record.trials
            if t.baseline and t.state in (FINISHED, REUSED) and t.mlflow_run_id and t.seed is not None}
    return Regime.from_runs(record.pairing.baseline, {seed: parent.client.get_run(run).data.metrics for seed, run in runs.items()})


def _dashboard(parent: ParentRun, record: SweepRecord, output: Path) -> None:
    """Build the sweep's dashboard from what the parent run now holds, and log it there."""
    from ghm.dashboard.build import build_dashboard

    try:
        path = build_dashboard(parent.experiment_name, record.name, tracking_uri=parent.tracking_uri, output=output)
        parent.log_dashboard(path)
    except Exception as err:  # the sweep's records stand without it; the error is logged and tagged
        log.exception("the sweep's dashboard could not be built")
        parent.note_dashboard_error(err)
        return
    print(f"Dashboard: {path.resolve()}  (also the artifact dashboard.html of parent run {parent.run_id})\n")


def check_failures(record: SweepRecord, max_failure_rate: float) -> None:
    """Fail the sweep when more of its own trials failed than ``max_failure_rate`` allows."""
    ran = [t for t in record.trials if t.state != REUSED]
    failed = sum(t.state == FAILED for t in ran)
    if ran and failed / len(ran) > max_failure_rate:
        raise RuntimeError(f"{failed} of {len(ran)} trials failed, above hydra.sweeper.max_failure_rate={max_failure_rate}: "
                           "see the trials' errors above")
