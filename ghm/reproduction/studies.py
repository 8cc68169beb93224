"""Why GHM loses here: the studies beside the paper's tables, each one named experiment, read back from the MLflow store.

A study is a comparison of arms (GHM-C + GHM-R against focal + smooth L1, each at its own settings) in
one or more conditions: the tuned verdict itself, schedule lengths, a warm start, the regimes of
Digits-Det GHM's paper says it is for, and the examples per density estimate. Each section gives, per
condition, both arms' mAP, the paired difference with its interval, P(GHM better), the smallest
difference its seeds resolve, and the regime (the baseline's own mAP and AP50 in that condition).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow.tracking import MlflowClient

from ghm.comparison.record import FINISHED, REUSED, TrialRecord
from ghm.comparison.regime import Regime
from ghm.comparison.settings import context_of, setting_of
from ghm.comparison.statistics import PairedComparison
from ghm.dashboard.source import DashboardError, SweepView, load_sweep

POINTS = 100.0  # mAP x 100, the paper's AP unit


@dataclass(frozen=True)
class Study:
    """One study: its experiment (``experiments/<experiment>.yaml``), what it asks, and its axis for the summary figure."""

    experiment: str
    title: str
    question: str
    axis: str | None = None  # the condition key whose levels the summary figure plots, None: not on it
    curves: bool = False  # its arms' per-epoch curves are a figure of their own (a schedule study)


STUDIES = (
    Study("ghm_vs_focal_tuned", "The tuned verdict: each arm tuned with the same budget",
          "Does GHM-C + GHM-R beat focal loss when each gets its own learning rate, warm-up and loss parameters?"),
    Study("ghm_wiring", "Which examples share one GHM density: the official wiring",
          "How much of GHM's deficit at the released settings is the density's scope: the paper's definition over every "
          "example of a step, per FPN level, or the official code's per FPN level and per group of 2 images?"),
    Study("ghm_schedule", "A schedule long enough for the slowest loss",
          "Does GHM catch up when both train 2 and 4 times as long (each at its own tuned settings)?",
          axis="train.epochs",
          curves=True),
    Study("ghm_warm_start", "A warm start from focal loss's detector",
          "Can GHM's objective keep (or improve) a detector that focal loss trained, continued as long as focal loss?"),
    Study("ghm_regime_unlabelled", "Unannotated digits (outliers at g near 1)",
          "Does GHM gain when a share of the training digits is drawn but left out of the annotations?",
          axis="data.unlabelled_fraction"),
    Study("ghm_regime_lookalikes", "Look-alike negatives (hard negatives)",
          "Does GHM gain when every image holds digit-like negatives (digits turned a quarter or mirrored)?", axis="data.lookalikes"),
    Study("ghm_regime_examples", "Fewer examples per class",
          "Does GHM gain when the training split shrinks from 4000 images to 1600 and 800 (the same 700 steps)?", axis="data.train_images"),
    Study("ghm_converged_lookalikes", "Look-alike negatives, both losses converged",
          "Does GHM gain on hard negatives once both losses have converged (28 epochs, where they tie on clean data)?"),
    Study("ghm_converged_unlabelled", "Unannotated digits, both losses converged",
          "Does GHM gain on outliers (40% of the digits unannotated) once both losses have converged (28 epochs)?"),
    Study("ghm_density_examples", "Examples per density estimate",
          "Does GHM suffer from estimating the density on few examples (8 against 32 images per step, the density over "
          "each step's images per FPN level, the rate by the linear rule)?", axis="train.batch_size"),
)


@dataclass(frozen=True)
class ConditionResult:
    """One comparison of a study: its condition, the arm against the baseline arm, and the baseline's regime there."""

    condition: dict[str, str]
    comparison: PairedComparison
    regime: Regime | None


def results(client: MlflowClient, view: SweepView) -> list[ConditionResult]:
    """Each comparison of the sweep with its condition and the baseline's regime in that condition."""
    record = view.record
    confirmations = [t for t in record.trials if t.search_trial is None]
    context = context_of(confirmations, record.pairing)
    where = {setting_of(t, record.pairing): context(t) for t in confirmations if not t.baseline}
    regimes = _regimes(client, confirmations, record.pairing.baseline or "baseline", context)
    return [ConditionResult(dict(where.get(c.setting, ())), c, regimes.get(where.get(c.setting, ()))) for c in record.comparisons]


def _regimes(client: MlflowClient, trials: list[TrialRecord], baseline: str, context) -> dict[tuple, Regime]:
    found: dict[tuple, dict[int, dict[str, float]]] = {}
    for t in trials:
        if t.baseline and t.state in (FINISHED, REUSED) and t.mlflow_run_id and t.seed is not None:
            found.setdefault(context(t), {})[t.seed] = client.get_run(t.mlflow_run_id).data.metrics
    return {key: Regime.from_runs(baseline, by_seed) for key, by_seed in found.items()}


def study_section(client: MlflowClient, study: Study) -> str:
    """A study's section: what it asks, the command, how its arms were set, and one row per condition."""
    command = f"python launch.py experiments={study.experiment}"
    lines = [f"## {study.title}", "", study.question, ""]
    try:
        view = load_sweep(client, study.experiment)
    except DashboardError:
        return "\n".join([*lines, f"Not measured yet: run `{command}`, then `python -m ghm.reproduction`.", ""])
    started = datetime.fromtimestamp(client.get_run(view.parent_run_id).info.start_time / 1000, tz=UTC)
    lines += [f"`{command}` (MLflow experiment `{study.experiment}`, sweep `{view.record.name}`, parent run `{view.parent_run_id}`, "
              f"started {started:%Y-%m-%d %H:%M} UTC).", ""]
    lines += [f"- Arm {arm.line()}" for arm in view.record.tuning]
    lines += [f"- {warning}" for arm in view.record.tuning for warning in arm.warnings]
    lines += [f"- {note}" for note in view.record.notes]
    found = results(client, view)
    if not found:
        return "\n".join([*lines, "", "No arm could be paired with the baseline.", ""])
    lines += ["", "| condition | setting | mAP x100 | baseline mAP x100 (AP50) | paired Δ x100 (t CI) | P(better) | MDE80 x100 | seeds |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for result in found:
        c = result.comparison
        condition = " ".join(f"{k}={v}" for k, v in result.condition.items()) or "default"
        ap50 = f" ({statistics.fmean(result.regime.ap50) * POINTS:.1f})" if result.regime and result.regime.seeds else ""
        lines.append(f"| {condition} | {c.setting} | {c.candidate_mean * POINTS:.1f} | {c.baseline_mean * POINTS:.1f}{ap50} | "
                     f"{c.mean * POINTS:+.1f} {_interval(c.t_low, c.t_high)} ({c.confidence:.0%}) | "
                     f"{c.p_improve:.2f} [{c.p_improve_low:.2f}, {c.p_improve_high:.2f}] | {_number(c.mde * POINTS)} | {c.n} |")
    warnings = dict.fromkeys(f"{' '.join(f'{k}={v}' for k, v in r.condition.items()) or 'default'}: {r.regime.warning()}" for r in found
                             if r.regime and r.regime.warning())  # one per condition: its arms share its baseline
    return "\n".join([*lines, "", *(f"- {w}" for w in warnings), ""])


def per_seed(view: SweepView) -> list[tuple[str, str, int, float]]:
    """Every confirmation run's (condition, setting, seed, objective): the per-seed numbers docs/benchmarks.md records."""
    record = view.record
    rows = []
    for t in sorted(record.trials, key=lambda t: t.number):
        if t.search_trial is None and t.objective is not None and t.state in (FINISHED, REUSED):
            condition = " ".join(f"{k}={v}" for k, v in t.condition.items()) or "default"
            rows.append((condition, setting_of(t, record.pairing), int(t.seed or 0), t.objective))
    return rows


def _interval(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) else f"[{low * POINTS:+.1f}, {high * POINTS:+.1f}]"


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"
