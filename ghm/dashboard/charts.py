"""The dashboard's charts: the leaderboard and its forest plot, per-epoch curves, a tuned comparison's tuning curves, Optuna's
plots, the gradient-norm figures.

Each chart is a function of the :class:`~ghm.dashboard.source.SweepView` (and the MLflow client for
what the runs logged) returning a Plotly figure, or a note saying why it is not drawn.
"""

from __future__ import annotations

import base64
import json
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from mlflow.tracking import MlflowClient

from ghm.comparison.record import FAILED, FINISHED, PRUNED, REUSED, SweepRecord
from ghm.dashboard.source import SweepView

FIGURES = ("gradient_norm_cls", "gradient_norm_reg")  # the paper's figures, as the training loop logs them
SETTING_PARAMS = ("loss.cls.bins", "loss.cls.momentum", "loss.reg.mu", "loss.reg.bins", "loss.reg.momentum")
OPTUNA_STATES = {FINISHED: optuna.trial.TrialState.COMPLETE, REUSED: optuna.trial.TrialState.COMPLETE,
                 PRUNED: optuna.trial.TrialState.PRUNED, FAILED: optuna.trial.TrialState.FAIL}


def leaderboard(view: SweepView) -> tuple[list[dict[str, Any]], go.Figure]:
    """Rows best first, and the differences as a forest plot.

    Ranked by paired difference, the baseline at its own difference of 0 (a setting worse than the
    baseline ranks below it), then settings without a paired difference by mean objective.
    """
    record = view.record
    sign = 1 if record.direction == "maximize" else -1
    by_setting = {c.setting: c for c in record.comparisons}
    rows = []
    for setting in view.settings.values():
        mean, low, high = setting.interval()
        comparison = by_setting.get(setting.label)
        rows.append({"setting": setting.label, "baseline": setting.baseline, "seeds": len(setting.objectives), "mean": mean,
                     "low": low, "high": high, "states": setting.states,
                     "diff": comparison.mean if comparison else None,
                     "diff_low": comparison.t_low if comparison else None,
                     "diff_high": comparison.t_high if comparison else None,
                     "pairs": comparison.n if comparison else 0})
    def rank(row: dict[str, Any]) -> tuple[bool, float, float]:
        diff = 0.0 if row["baseline"] else row["diff"]
        return diff is None, -sign * (diff or 0.0), -sign * (row["mean"] if not math.isnan(row["mean"]) else -math.inf * sign)

    rows.sort(key=rank)
    compared = [r for r in rows if r["diff"] is not None][::-1]
    figure = go.Figure(go.Scatter(
        x=[r["diff"] for r in compared], y=[r["setting"] for r in compared], mode="markers", marker={"size": 10},
        error_x={"type": "data", "symmetric": False,
                 "array": [_finite(r["diff_high"]) - r["diff"] for r in compared],
                 "arrayminus": [r["diff"] - _finite(r["diff_low"], r["diff"]) for r in compared]}))
    figure.add_vline(x=0, line_dash="dash", line_color="#888")
    figure.update_layout(title=f"Paired difference of {record.metric} against the baseline (95% t interval)",
                         xaxis_title=f"Δ {record.metric} (setting - baseline)", height=160 + 40 * len(compared),
                         margin={"l": 220})
    return rows, figure


def _finite(value: float | None, fallback: float | None = None) -> float:
    if value is None or math.isnan(value):
        return fallback if fallback is not None else 0.0
    return value


def curves(client: MlflowClient, view: SweepView, metric: str) -> go.Figure | None:
    """Per-epoch ``metric`` by setting: the mean over seeds with a band of one standard deviation."""
    figure = go.Figure()
    for index, setting in enumerate(view.settings.values()):
        by_step: dict[int, list[float]] = {}
        for run_id in setting.runs:
            for point in client.get_metric_history(run_id, metric):
                by_step.setdefault(point.step, []).append(point.value)
        if not by_step:
            continue
        steps = sorted(by_step)
        means = [statistics.fmean(by_step[s]) for s in steps]
        spreads = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
        colour = _palette(index)
        figure.add_trace(go.Scatter(x=steps + steps[::-1], y=[m + d for m, d in zip(means, spreads, strict=True)] +
                                    [m - d for m, d in zip(means, spreads, strict=True)][::-1],
                                    fill="toself", fillcolor=colour.replace("rgb", "rgba").replace(")", ",0.15)"),
                                    line={"width": 0}, hoverinfo="skip", showlegend=False, legendgroup=setting.label))
        figure.add_trace(go.Scatter(x=steps, y=means, mode="lines+markers", name=setting.label, line={"color": colour},
                                    legendgroup=setting.label))
    if not figure.data:
        return None
    figure.update_layout(title=f"{metric} per epoch (mean ± sd over seeds)", xaxis_title="epoch", yaxis_title=metric)
    return figure


def tuning_curves(record: SweepRecord) -> go.Figure | None:
    """A tuned comparison's arms: each search trial's mean over the tuning seeds, and the best so far, against the trial number.

    Equal budgets show as curves of equal length; a curve still climbing at its end says the budget was too small.
    """
    if not record.tuning:
        return None
    figure = go.Figure()
    for index, arm in enumerate(record.tuning):
        colour = _palette(index)
        trials = list(range(1, len(arm.curve) + 1))
        figure.add_trace(go.Scatter(x=trials, y=arm.curve, mode="lines", line={"color": colour, "shape": "hv"},
                                    name=f"{arm.label}: best so far", legendgroup=arm.label))
        finished = [(i, t.mean) for i, t in enumerate(arm.trials, start=1) if t.mean is not None]
        figure.add_trace(go.Scatter(x=[i for i, _ in finished], y=[m for _, m in finished], mode="markers", name=f"{arm.label}: trial",
                                    marker={"color": colour, "size": 7, "opacity": 0.6}, legendgroup=arm.label))
    figure.update_layout(title=f"Tuning curves: {record.metric} (mean over the tuning seeds) against the search trial, per arm",
                         xaxis_title="search trial (budget used)", yaxis_title=record.metric)
    return figure


def _palette(index: int) -> str:
    colours = ("rgb(9,105,218)", "rgb(207,34,46)", "rgb(26,127,55)", "rgb(154,103,0)", "rgb(130,80,223)", "rgb(191,57,137)",
               "rgb(27,124,131)", "rgb(87,96,106)")
    return colours[index % len(colours)]


def study_of(record: SweepRecord, storage: str | None = None) -> optuna.Study:
    """The sweep's trials as an Optuna study, over the distributions it searched (a grid's: inferred from its values).

    A sweep recorded before its record carried the search space (version 1) is read from its study's
    ``storage`` when given.
    """
    if storage and not record.space and record.search == "optuna":
        return optuna.load_study(study_name=record.name, storage=storage)
    study = optuna.create_study(directions=[record.direction], study_name=record.name)
    keys = sorted({k for t in record.trials for k in t.params})
    distributions = {k: optuna.distributions.json_to_distribution(json.dumps(record.space[k])) if k in record.space
                     else _distribution([t.params[k] for t in record.trials if k in t.params]) for k in keys}
    for trial in sorted(record.trials, key=lambda t: t.number):
        state = OPTUNA_STATES[trial.state]
        study.add_trial(optuna.trial.create_trial(
            params={k: _typed(v, distributions[k]) for k, v in trial.params.items()},
            distributions={k: distributions[k] for k in trial.params}, state=state,
            value=trial.objective if state == optuna.trial.TrialState.COMPLETE else None))
    return study


def _distribution(values: list[Any]) -> optuna.distributions.BaseDistribution:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return optuna.distributions.CategoricalDistribution(sorted({str(v) for v in values}))
    if all(n.is_integer() for n in numbers) and all(not isinstance(v, float) for v in values):
        return optuna.distributions.IntDistribution(int(min(numbers)), int(max(numbers)))
    return optuna.distributions.FloatDistribution(min(numbers), max(numbers))


def _typed(value: Any, distribution: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return value if value in distribution.choices else str(value)
    return int(value) if isinstance(distribution, optuna.distributions.IntDistribution) else float(value)


def optuna_figures(study: optuna.Study) -> dict[str, go.Figure | str]:
    """Optuna's own plots; where one cannot be drawn (too few finished trials, one parameter), why not."""
    from optuna import visualization as vis

    swept = [name for name, single in _varied(study).items() if not single and name != "seed"]  # a seed is no setting
    slices = [p for p in swept if p in SETTING_PARAMS or p.split(".")[-1] in ("bins", "momentum", "mu")] or swept
    plots = {"Optimisation history": lambda: vis.plot_optimization_history(study),
             "Parameter importances": lambda: vis.plot_param_importances(study, params=swept or None),
             "Parallel coordinates": lambda: vis.plot_parallel_coordinate(study, params=swept or None),
             "Slices": lambda: vis.plot_slice(study, params=slices or None)}
    figures: dict[str, go.Figure | str] = {}
    for title, plot in plots.items():
        try:
            figures[title] = plot()
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            figures[title] = f"not drawn: {err}"
    return figures


def _varied(study: optuna.Study) -> dict[str, bool]:
    """Each parameter of the study's trials, and whether it took a single value (nothing to plot then)."""
    values: dict[str, set[str]] = {}
    for trial in study.trials:
        for key, value in trial.params.items():
            values.setdefault(key, set()).add(str(value))
    return {key: len(seen) < 2 for key, seen in values.items()}


def gradient_figures(client: MlflowClient, view: SweepView, best: str | None) -> dict[str, dict[str, str]]:
    """The end-of-training gradient-norm figures (as data URIs) of the best setting's and the baseline's first run."""
    chosen = {"best: " + best: view.settings[best]} if best else {}
    chosen.update({"baseline: " + s.label: s for s in view.settings.values() if s.baseline})
    shown: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for title, setting in chosen.items():
            if not setting.runs:
                continue
            run_id = setting.runs[0]
            phases = [a.path for a in client.list_artifacts(run_id, "figures")]
            if not phases:
                continue
            phase = next((p for p in phases if p.endswith("/end")), phases[-1])
            present = {a.path for a in client.list_artifacts(run_id, phase)}
            images = {}
            for name in FIGURES:
                if f"{phase}/{name}.png" in present:
                    local = client.download_artifacts(run_id, f"{phase}/{name}.png", tmp)
                    images[name] = "data:image/png;base64," + base64.b64encode(Path(local).read_bytes()).decode()
            if images:
                shown[f"{title} (run {run_id[:8]}, {phase.split('/')[-1]})"] = images
    return shown
