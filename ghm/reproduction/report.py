"""The reproduction report: each of the paper's tables beside the latest sweep of its experiment, in Markdown.

For every row: the paper's AP and its difference from the table's baseline, our mAP (mean over
seeds, 95% t interval) and our paired difference from the same baseline (95% t interval), all in
AP points (mAP x 100) so the two read alike; settings the sweep measured that the paper has no
number for follow, with ours alone. For every pair of rows the paper orders, whether our
paired difference confirms the order, contradicts it, or cannot tell. Each table states the regime
it was measured in (the baseline's mAP and AP50): an ordering found on detectors that do not
detect says nothing.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow.tracking import MlflowClient

from ghm.comparison.regime import Regime
from ghm.comparison.statistics import PairedComparison, compare
from ghm.dashboard.source import DashboardError, Setting, SweepView, load_sweep
from ghm.reproduction.paper import TABLES, PaperTable

POINTS = 100.0  # mAP in [0, 1] to COCO AP points, the paper's unit


@dataclass(frozen=True)
class Ordering:
    """One ordering of the paper (``low`` below ``high``) and what our paired difference ``high - low`` says of it."""

    low: str
    high: str
    paper_gap: float
    ours: PairedComparison | None

    @property
    def verdict(self) -> str:
        if self.ours is None or self.ours.n < 2 or math.isnan(self.ours.t_low):
            return "not measured"
        if self.ours.t_low > 0:
            return "confirmed"
        if self.ours.t_high < 0:
            return "contradicted"
        return "not resolved"


def orderings(table: PaperTable, settings: dict[str, Setting]) -> list[Ordering]:
    """Every pair of rows whose paper AP differs, lower first, with our paired difference of the higher minus the lower."""
    found = []
    for a, b in itertools.combinations(table.rows, 2):
        if a.ap == b.ap:
            continue
        low, high = (a, b) if a.ap < b.ap else (b, a)
        ours = _paired(settings.get(high.setting), settings.get(low.setting), f"{high.setting} - {low.setting}")
        found.append(Ordering(low.name, high.name, high.ap - low.ap, ours))
    return found


def _paired(candidate: Setting | None, baseline: Setting | None, label: str) -> PairedComparison | None:
    if candidate is None or baseline is None or not set(candidate.objectives) & set(baseline.objectives):
        return None
    return compare(label, candidate.objectives, baseline.objectives)


def borrowed_baseline(client: MlflowClient, view: SweepView, label: str) -> Setting | None:
    """A sweep without baseline trials (GHM-C's unit regions) takes them from any sweep: for each of its runs, the latest
    finished baseline run with the same ``pair_key`` (the same data, model, schedule, seed and code), wherever it ran."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    borrowed = Setting(label, baseline=True)
    for trial in view.record.trials:
        if trial.mlflow_run_id is None or trial.baseline:
            continue
        key = client.get_run(trial.mlflow_run_id).data.tags.get("pair_key")
        runs = client.search_runs(experiments, f"tags.pair_key = '{key}' and tags.baseline = 'true' and attributes.status = 'FINISHED'",
                                  max_results=1, order_by=["attributes.start_time DESC"]) if key else []
        if runs and "mAP" in runs[0].data.metrics and trial.seed is not None and trial.seed not in borrowed.objectives:
            borrowed.objectives[trial.seed] = runs[0].data.metrics["mAP"]
            borrowed.runs.append(runs[0].info.run_id)
    return borrowed if borrowed.objectives else None


def regime(client: MlflowClient, baseline: Setting | None, label: str) -> str:
    """How well the detectors this table compares detect: the baseline's final mAP and AP50 over its runs, and the
    sweep's warning when it does not really detect (:class:`ghm.comparison.regime.Regime`)."""
    if baseline is None or not baseline.runs:
        return "Regime: baseline not measured."
    metrics = dict(enumerate(client.get_run(run_id).data.metrics for run_id in baseline.runs))
    found = Regime.from_runs(label, metrics)
    return "\n\n".join(f"{part}." for part in (found.summary(), found.warning()) if part)


def _interval(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) else f"[{low * POINTS:+.1f}, {high * POINTS:+.1f}]"


def table_section(client: MlflowClient, table: PaperTable) -> str:
    """One table's section: the rows, the orderings, and where the numbers come from."""
    command = f"python launch.py experiments={table.experiment}"
    lines = [f"## {table.title}", ""]
    try:
        view: SweepView | None = load_sweep(client, table.experiment)
    except DashboardError:
        view = None
    if view is None:
        return "\n".join([*lines, f"Not measured yet: run `{command}`, then `python -m ghm.reproduction`.", ""])
    baseline = view.settings.get(table.baseline) or borrowed_baseline(client, view, table.baseline)
    settings = {**view.settings, **({table.baseline: baseline} if baseline else {})}
    started = datetime.fromtimestamp(client.get_run(view.parent_run_id).info.start_time / 1000, tz=UTC)
    paper_baseline = table.row(table.baseline).ap
    lines += [f"`{command}` (MLflow experiment `{table.experiment}`, sweep `{view.record.name}`, parent run "
              f"`{view.parent_run_id}`, started {started:%Y-%m-%d %H:%M} UTC). Paper: {table.source}.",
              "", regime(client, baseline, table.baseline), "",
              f"| setting | paper AP | paper Δ vs {table.row(table.baseline).name} | our mAP x100 (95% CI) | seeds | "
              f"our paired Δ (95% t CI) |", "|---|---:|---:|---:|---:|---:|"]
    for row in table.rows:
        lines.append(_row(f"{row.name} (`{row.setting}`)", f"{row.ap:.1f} | {row.ap - paper_baseline:+.1f}", row.setting,
                          settings.get(row.setting), table.baseline, baseline))
    papered = {row.setting for row in table.rows}
    for setting in sorted(set(view.settings) - papered):  # measured by the sweep beside the paper's rows: no paper number
        lines.append(_row(f"`{setting}`", "— | —", setting, view.settings[setting], table.baseline, baseline))
    found = orderings(table, settings)
    if not found:
        return "\n".join([*lines, "", "The paper orders none of these settings: the differences are ours alone.", ""])
    counts = {verdict: sum(o.verdict == verdict for o in found) for verdict in ("confirmed", "contradicted", "not resolved")}
    lines += ["", f"The paper's orderings here: {counts['confirmed']} confirmed, {counts['contradicted']} contradicted, "
              f"{counts['not resolved']} not resolved (of {len(found)}; paired 95% t interval of the difference).", ""]
    lines += [f"- {o.low} < {o.high} (paper: +{o.paper_gap:.1f}): {o.verdict}"
              + (f", ours {o.ours.mean * POINTS:+.1f} {_interval(o.ours.t_low, o.ours.t_high)}" if o.ours else "") for o in found]
    return "\n".join([*lines, ""])


def _row(label: str, paper: str, setting: str, ours: Setting | None, table_baseline: str, baseline: Setting | None) -> str:
    """One table row: the paper's cells as given, then our mean over seeds and paired difference from the baseline."""
    if ours is None or not ours.objectives:
        return f"| {label} | {paper} | not measured | 0 | |"
    mean, low, high = ours.interval()
    diff = "baseline" if setting == table_baseline else _difference(_paired(ours, baseline, setting))
    return f"| {label} | {paper} | {mean * POINTS:.1f} {_interval(low, high)} | {len(ours.objectives)} | {diff} |"


def _difference(comparison: PairedComparison | None) -> str:
    if comparison is None:
        return "no common seed"
    return f"{comparison.mean * POINTS:+.1f} {_interval(comparison.t_low, comparison.t_high)}"


def build_report(client: MlflowClient, tables: tuple[PaperTable, ...] = TABLES) -> str:
    """The whole report: a short reading guide, then one section per table."""
    header = ["# Reproducing the paper's tables on Digits-Det",
              "",
              f"Built by `python -m ghm.reproduction` from the MLflow store `{client.tracking_uri}` on "
              f"{datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC. The paper's numbers are COCO AP (%) of RetinaNet ResNet-50 "
              "(ImageNet-initialised, 90k iterations on 8 GPUs); ours are Digits-Det val mAP x 100 of the project's main-job "
              "schedule on one CPU core per run (see README). Differences are paired by seed: each setting's run and its "
              "baseline's share data, model, schedule and seed. A difference whose interval excludes 0 is a finding; "
              "one that spans 0 is not resolved by these seeds.",
              ""]
    return "\n".join(header + [table_section(client, table) for table in tables])
