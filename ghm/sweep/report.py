"""The end of a sweep: the comparison table on the console, the parent run's records, the dashboard, the failure check.

Under the table: the regime (how well the baseline itself detects), a tuned comparison's arms (budget,
best settings, warnings about its search) and the notes on how the compared settings were chosen.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ghm.comparison.pairing import Pairing
from ghm.comparison.record import FAILED, FINISHED, REUSED, STATES, SweepRecord
from ghm.comparison.regime import Regime
from ghm.comparison.settings import context_of
from ghm.sweep.config import SweeperConf

if TYPE_CHECKING:  # MLflow's and SciPy's imports cost a sweep's start seconds: only its end needs them
    from ghm.sweep.parent_run import ParentRun

log = logging.getLogger(__name__)


def report(record: SweepRecord, parent: ParentRun | None, sweep_dir: Path) -> None:
    """Print the comparison; record it, with the dashboard, on the parent run and close it."""
    table = "(no setting could be paired with the baseline)"
    if record.comparisons:
        from ghm.comparison.statistics import format_table  # SciPy: only where there is a comparison

        table = format_table(record.comparisons, record.metric)
    for where, regime in baseline_regimes(record, parent).items():
        table = f"{table}\n{regime.line()}" + (f" ({where})" if where else "")
    for arm in record.tuning:
        table = "\n".join([table, f"Arm {arm.line()}", *arm.warnings])
    if record.notes:
        table = "\n".join([table, *record.notes])
    log.info("sweep done: %s", {state: sum(t.state == state for t in record.trials) for state in STATES})
    print(f"\n{table}\n")
    if parent is None:
        return
    print(f"Browse the runs: mlflow ui --backend-store-uri {parent.tracking_uri}  (parent run {parent.run_id})\n")
    parent.finish(record, table)
    _dashboard(parent, record, sweep_dir / "dashboard.html")
    parent.end()


def provenance(kind: str, settings: SweeperConf, pairing: Pairing) -> str | None:
    """How the compared settings were chosen, said under every verdict: a comparison at settings chosen for one arm
    measures how well those settings suit the others (None without a baseline: no verdict)."""
    if pairing.baseline is None:
        return None
    if kind == "arms":
        return ("Fixed arms: each arm ran at its own given settings (" + "; ".join(f"{name}: {' '.join(arm.overrides)}" for name, arm
                in settings.arms.items()) + "), none searched by this sweep; the verdict compares them paired by seed")
    if kind == "tuned":
        shared = ", ".join(settings.params) or "no shared parameter"
        return (f"Tuned comparison: each arm ({', '.join(settings.arms)}) searched {shared} and its own parameters with the same "
                f"sampler and budget ({settings.tuning.budget} trials x {len(settings.tuning.seeds)} tuning seeds); each arm's best "
                f"was re-run on fresh seeds ({settings.confirm_seeds} first) and the verdict is best against best, paired by seed")
    chosen = f" (chosen for {settings.fixed_settings_for})" if settings.fixed_settings_for else ""
    if kind == "optuna":
        return (f"Not a tuned comparison: only the candidates were searched ({settings.n_trials} trials); the baseline ran at the "
                f"task's fixed settings{chosen}. A fair verdict tunes every arm alike: hydra.sweeper.arms")
    return (f"Not a tuned comparison: every setting ran at the task's fixed settings{chosen}, so the differences say how well "
            "those settings suit each setting. A fair verdict tunes every arm alike: hydra.sweeper.arms")


def baseline_regimes(record: SweepRecord, parent: ParentRun | None) -> dict[str, Regime]:
    """The baseline's final mAP and AP50 per seed in each context (one regime line per rate, condition, ...), read from its
    MLflow runs; none without a baseline, tracking, or detection metrics (a task that reports none has no detection regime)."""
    if record.pairing.baseline is None or parent is None:
        return {}
    baselines = [t for t in record.trials if t.baseline and t.state in (FINISHED, REUSED) and t.mlflow_run_id and t.seed is not None
                 and t.search_trial is None]
    context = context_of(baselines, record.pairing)
    metrics: dict[str, dict[int, dict[str, float]]] = {}
    for trial in baselines:
        where = " ".join(f"{k}={v}" for k, v in context(trial))
        metrics.setdefault(where, {})[trial.seed] = parent.client.get_run(trial.mlflow_run_id).data.metrics
    if not metrics:
        return {"": Regime.from_runs(record.pairing.baseline, {})}  # said: the comparison has no reference
    if not any("AP50" in m for by_seed in metrics.values() for m in by_seed.values()):
        return {}
    return {where: Regime.from_runs(record.pairing.baseline, by_seed) for where, by_seed in sorted(metrics.items())}


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
