"""The reproduction report: the studies of why GHM loses here (:mod:`ghm.reproduction.studies`, with their figures), then
each of the paper's tables beside the latest sweep of its experiment, in Markdown.

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
from pathlib import Path

from mlflow.tracking import MlflowClient

from ghm.comparison.record import FINISHED, REUSED
from ghm.comparison.regime import Regime
from ghm.comparison.settings import context_of, setting_of
from ghm.comparison.statistics import PairedComparison, compare
from ghm.dashboard.source import DashboardError, Setting, SweepView, load_sweep
from ghm.reproduction.figures import axes_figure, schedule_figure
from ghm.reproduction.paper import TABLES, PaperTable
from ghm.reproduction.studies import STUDIES, Study, study_section

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


def borrowed_baseline(client: MlflowClient, view: SweepView, label: str, runs: set[str]) -> Setting | None:
    """A sweep without baseline trials (GHM-C's unit regions) takes them from any sweep: for each of its ``runs`` (one
    context's), the latest finished baseline run with the same ``pair_key`` (the same data, model, schedule, seed and code),
    wherever it ran."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    borrowed = Setting(label, baseline=True)
    for trial in view.record.trials:
        if trial.mlflow_run_id not in runs or trial.baseline:
            continue
        key = client.get_run(trial.mlflow_run_id).data.tags.get("pair_key")
        found = client.search_runs(experiments, f"tags.pair_key = '{key}' and tags.baseline = 'true' and attributes.status = 'FINISHED'",
                                   max_results=1, order_by=["attributes.start_time DESC"]) if key else []
        if found and "mAP" in found[0].data.metrics and trial.seed is not None and trial.seed not in borrowed.objectives:
            borrowed.objectives[trial.seed] = found[0].data.metrics["mAP"]
            borrowed.runs.append(found[0].info.run_id)
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


def by_context(view: SweepView) -> dict[str, dict[str, Setting]]:
    """The sweep's settings in each of its contexts (e.g. ``train=cpu_tuned_focal``: a table at each arm's best rate), keyed
    by their label without the context, as the paper's rows name them; one context, ``""``, for a sweep without."""
    record = view.record
    trials = [t for t in record.trials if t.search_trial is None]
    context = context_of(trials, record.pairing)
    found: dict[str, dict[str, Setting]] = {}
    for trial in trials:
        where = [f"{k}={v}" for k, v in context(trial)]
        label = " ".join(part for part in setting_of(trial, record.pairing).split() if part not in where)
        setting = found.setdefault(" ".join(where), {}).setdefault(label, Setting(label, trial.baseline))
        setting.states[trial.state] = setting.states.get(trial.state, 0) + 1
        if trial.state in (FINISHED, REUSED) and trial.objective is not None and trial.seed is not None:
            setting.objectives[trial.seed] = trial.objective
            if trial.mlflow_run_id:
                setting.runs.append(trial.mlflow_run_id)
    return found


def table_section(client: MlflowClient, table: PaperTable) -> str:
    """One table's section: per context of its sweep (each rate it ran at), the rows, the orderings, and their source."""
    command = f"python launch.py experiments={table.experiment}"
    lines = [f"## {table.title}", ""]
    try:
        view: SweepView | None = load_sweep(client, table.experiment)
    except DashboardError:
        view = None
    if view is None:
        return "\n".join([*lines, f"Not measured yet: run `{command}`, then `python -m ghm.reproduction`.", ""])
    started = datetime.fromtimestamp(client.get_run(view.parent_run_id).info.start_time / 1000, tz=UTC)
    lines += [f"`{command}` (MLflow experiment `{table.experiment}`, sweep `{view.record.name}`, parent run "
              f"`{view.parent_run_id}`, started {started:%Y-%m-%d %H:%M} UTC). Paper: {table.source}.", ""]
    contexts = by_context(view)
    for where, measured in sorted(contexts.items()):
        if len(contexts) > 1:
            lines += [f"### At `{where}`", ""]
        lines += context_table(client, table, view, measured)
    return "\n".join(lines)


def context_table(client: MlflowClient, table: PaperTable, view: SweepView, measured: dict[str, Setting]) -> list[str]:
    """The table's rows, regime and orderings from one context's settings."""
    baseline = measured.get(table.baseline) or borrowed_baseline(client, view, table.baseline,
                                                                 {run for setting in measured.values() for run in setting.runs})
    settings = {**measured, **({table.baseline: baseline} if baseline else {})}
    paper_baseline = table.row(table.baseline).ap
    lines = [regime(client, baseline, table.baseline), "",
             f"| setting | paper AP | paper Δ vs {table.row(table.baseline).name} | our mAP x100 (95% CI) | seeds | "
             f"our paired Δ (95% t CI) |", "|---|---:|---:|---:|---:|---:|"]
    for row in table.rows:
        lines.append(_row(f"{row.name} (`{row.setting}`)", f"{row.ap:.1f} | {row.ap - paper_baseline:+.1f}", row.setting,
                          settings.get(row.setting), table.baseline, baseline))
    papered = {row.setting for row in table.rows}
    for setting in sorted(set(measured) - papered):  # measured by the sweep beside the paper's rows: no paper number
        lines.append(_row(f"`{setting}`", "— | —", setting, measured[setting], table.baseline, baseline))
    found = orderings(table, settings)
    if not found:
        return [*lines, "", "The paper orders none of these settings: the differences are ours alone.", ""]
    counts = {verdict: sum(o.verdict == verdict for o in found) for verdict in ("confirmed", "contradicted", "not resolved")}
    lines += ["", f"The paper's orderings here: {counts['confirmed']} confirmed, {counts['contradicted']} contradicted, "
              f"{counts['not resolved']} not resolved (of {len(found)}; paired 95% t interval of the difference).", ""]
    lines += [f"- {o.low} < {o.high} (paper: +{o.paper_gap:.1f}): {o.verdict}"
              + (f", ours {o.ours.mean * POINTS:+.1f} {_interval(o.ours.t_low, o.ours.t_high)}" if o.ours else "") for o in found]
    return [*lines, ""]


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


def build_report(client: MlflowClient, tables: tuple[PaperTable, ...] = TABLES, studies: tuple[Study, ...] = STUDIES,
                 figures: Path | None = None, preface: str = "") -> str:
    """The whole report: a reading guide, the ``preface`` (the verdict, written from the evidence below), the studies of why
    GHM loses here with their figures (drawn into ``figures``, linked relative to the report's folder, its parent), then
    one section per paper table."""
    header = ["# Reproducing the paper's tables on Digits-Det, and why GHM loses here",
              "",
              f"Built by `python -m ghm.reproduction` from the MLflow store `{client.tracking_uri}` on "
              f"{datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC. The paper's numbers are COCO AP (%) of RetinaNet ResNet-50 "
              "(ImageNet-initialised, 90k iterations on 8 GPUs); ours are Digits-Det val mAP x 100 of the project's main-job "
              "schedule on one CPU core per run (see README). GHM is wired as the official code (`model.ghm_scope=official`: "
              "its density per FPN level and per group of 2 images) unless a section says otherwise. Differences are paired by "
              "seed: each setting's run and its baseline's share data, model, schedule and seed. A difference whose interval "
              "excludes 0 is a finding; one that spans 0 is not resolved by these seeds.",
              ""]
    views = {}
    for study in studies:
        try:
            views[study] = load_sweep(client, study.experiment)
        except DashboardError:
            continue
    drawn = _figures(client, views, figures) if figures else []
    parts = [*header, preface.strip(), "", *drawn, *(study_section(client, study) for study in studies),
             "# The paper's tables", "", *(table_section(client, table) for table in tables)]
    return "\n".join(parts)


def _figures(client: MlflowClient, views: dict[Study, SweepView], folder: Path) -> list[str]:
    """The studies' figures drawn into ``folder``, as Markdown images relative to the report's folder (``folder``'s parent)."""
    lines = []
    for study, view in views.items():
        if study.curves:
            path = schedule_figure(client, view, folder / f"{study.experiment}_curves.png")
            lines += [f"![{study.title}: mAP against training steps]({path.relative_to(folder.parent).as_posix()})", ""]
    if any(study.axis for study in views):
        path = axes_figure(client, views, folder / "difference_by_axis.png")
        lines += [f"![GHM's paired difference from focal loss along each axis]({path.relative_to(folder.parent).as_posix()})", ""]
    return lines
