"""The comparison dashboard of a sweep: one self-contained HTML page from its MLflow records and Optuna study.

Does GHM beat the focal baseline here, and with which settings? The page answers at a glance: a
leaderboard of settings (mean objective over seeds with its 95% interval, the paired difference
against the baseline with its 95% interval, best first), per-epoch curves by setting (mean with a
band over seeds), Optuna's optimisation history, parameter importances, parallel coordinates and
slices, the gradient-norm figures of the best setting beside the baseline's, and every trial with
its state (pruned and failed ones included). Plotly's script and the figures are embedded, so the
file opens offline, from disk, a local server or the MLflow UI (the sweep logs it on its parent run).

``python -m ghm.dashboard --experiment ghm_vs_focal`` builds it for the latest sweep of an experiment.
"""

from __future__ import annotations

import argparse
import base64
import html
import http.server
import json
import logging
import math
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from mlflow.tracking import MlflowClient
from plotly.offline import get_plotlyjs
from scipy import stats

from ghm.comparison.pairing import Pairing
from ghm.tracking.store import default_tracking_uri, tracking_client

log = logging.getLogger(__name__)

DASHBOARD_DIR = Path("dashboards")  # under the working directory
FIGURES = ("gradient_norm_cls", "gradient_norm_reg")  # the paper's figures, as the training loop logs them
SETTING_PARAMS = ("loss.cls.bins", "loss.cls.momentum", "loss.reg.mu", "loss.reg.bins", "loss.reg.momentum")
STATE_COLOURS = {"finished": "#1a7f37", "reused": "#0969da", "pruned": "#9a6700", "failed": "#cf222e"}


class DashboardError(RuntimeError):
    """The sweep or experiment asked for is not in the tracking store."""


@dataclass
class Setting:
    """One swept setting (the trial parameters but the seed) and what its trials gave."""

    label: str
    baseline: bool
    objectives: dict[int, float] = field(default_factory=dict)  # seed -> final objective
    runs: list[str] = field(default_factory=list)  # MLflow run ids of its finished trials
    states: dict[str, int] = field(default_factory=dict)

    def interval(self) -> tuple[float, float, float]:
        """Mean over seeds and its 95% t interval (NaN bounds with one seed)."""
        values = list(self.objectives.values())
        mean = statistics.fmean(values) if values else math.nan
        if len(values) < 2:
            return mean, math.nan, math.nan
        half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
        return mean, mean - half, mean + half


@dataclass
class SweepRecord:
    """What the dashboard shows, read from the sweep's parent run and its trials' runs."""

    name: str
    experiment: str
    parent_run_id: str
    metric: str
    direction: str
    trials: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    settings: dict[str, Setting]


def load_sweep(client: MlflowClient, experiment: str, sweep: str | None = None) -> SweepRecord:
    """The named sweep of ``experiment`` (its ``sweep_parent`` tag), or its latest one."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise DashboardError(f"no MLflow experiment {experiment!r} at {client.tracking_uri}")
    query = f"tags.sweep_parent = '{sweep}'" if sweep else "tags.sweep_parent != ''"
    parents = client.search_runs([found.experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"])
    if not parents:
        what = f"sweep {sweep!r}" if sweep else "sweep"
        raise DashboardError(f"no {what} in experiment {experiment!r} at {client.tracking_uri}")
    parent = parents[0]
    record = _download_json(client, parent.info.run_id, "sweep.json")
    params = parent.data.params
    settings: dict[str, Setting] = {}
    for trial in record["trials"]:
        label = Pairing().setting_label(trial["params"])
        setting = settings.setdefault(label, Setting(label, trial["baseline"]))
        setting.states[trial["state"]] = setting.states.get(trial["state"], 0) + 1
        if trial["state"] in ("finished", "reused") and trial["objective"] is not None and trial["seed"] is not None:
            setting.objectives[trial["seed"]] = trial["objective"]
            if trial["mlflow_run_id"]:
                setting.runs.append(trial["mlflow_run_id"])
    return SweepRecord(name=parent.data.tags["sweep_parent"], experiment=experiment, parent_run_id=parent.info.run_id,
                       metric=params.get("metric", "mAP"), direction=params.get("direction", "maximize"),
                       trials=record["trials"], comparisons=record["comparisons"], settings=settings)


def _download_json(client: MlflowClient, run_id: str, path: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception as err:
            raise DashboardError(f"the sweep's parent run {run_id} has no {path} (is the sweep still running?): {err}") from err
        return json.loads(Path(local).read_text())


# -- figures -----------------------------------------------------------------------------------


def leaderboard(record: SweepRecord) -> tuple[list[dict[str, Any]], go.Figure]:
    """Rows best first (by paired difference, then by mean objective), and the differences as a forest plot."""
    sign = 1 if record.direction == "maximize" else -1
    by_setting = {c["setting"]: c for c in record.comparisons}
    rows = []
    for setting in record.settings.values():
        mean, low, high = setting.interval()
        comparison = by_setting.get(setting.label)
        rows.append({"setting": setting.label, "baseline": setting.baseline, "seeds": len(setting.objectives), "mean": mean,
                     "low": low, "high": high, "states": setting.states,
                     "diff": comparison["mean"] if comparison else None,
                     "diff_low": comparison["t_low"] if comparison else None,
                     "diff_high": comparison["t_high"] if comparison else None,
                     "pairs": len(comparison["differences"]) if comparison else 0})
    rows.sort(key=lambda r: (r["diff"] is None, -sign * (r["diff"] if r["diff"] is not None else 0),
                             -sign * (r["mean"] if not math.isnan(r["mean"]) else -math.inf * sign)))
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


def curves(client: MlflowClient, record: SweepRecord, metric: str) -> go.Figure | None:
    """Per-epoch ``metric`` by setting: the mean over seeds with a band of one standard deviation."""
    figure = go.Figure()
    for index, setting in enumerate(record.settings.values()):
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


def _palette(index: int) -> str:
    colours = ("rgb(9,105,218)", "rgb(207,34,46)", "rgb(26,127,55)", "rgb(154,103,0)", "rgb(130,80,223)", "rgb(191,57,137)",
               "rgb(27,124,131)", "rgb(87,96,106)")
    return colours[index % len(colours)]


def study_of(record: SweepRecord, storage: str | None) -> optuna.Study:
    """The sweep's Optuna study when its storage has it (a search), else one built from its trials (a grid)."""
    if storage:
        try:
            return optuna.load_study(study_name=record.name, storage=storage)
        except KeyError:
            pass  # a grid: no study in the storage
    study = optuna.create_study(direction=record.direction, study_name=record.name)
    keys = sorted({k for t in record.trials for k in t["params"]})
    distributions = {k: _distribution([t["params"][k] for t in record.trials if k in t["params"]]) for k in keys}
    states = {"finished": optuna.trial.TrialState.COMPLETE, "reused": optuna.trial.TrialState.COMPLETE,
              "pruned": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL}
    for trial in sorted(record.trials, key=lambda t: t["number"]):
        state = states[trial["state"]]
        study.add_trial(optuna.trial.create_trial(
            params={k: _typed(v, distributions[k]) for k, v in trial["params"].items()},
            distributions={k: distributions[k] for k in trial["params"]}, state=state,
            value=trial["objective"] if state == optuna.trial.TrialState.COMPLETE else None))
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
        return str(value)
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


def gradient_figures(client: MlflowClient, record: SweepRecord, best: str | None) -> dict[str, dict[str, str]]:
    """The end-of-training gradient-norm figures (as data URIs) of the best setting's and the baseline's first run."""
    chosen = {"best: " + best: record.settings[best]} if best else {}
    chosen.update({"baseline: " + s.label: s for s in record.settings.values() if s.baseline})
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


# -- the page ----------------------------------------------------------------------------------


def render(client: MlflowClient, record: SweepRecord, optuna_storage: str | None) -> str:
    rows, forest = leaderboard(record)
    best = next((r["setting"] for r in rows if not r["baseline"] and r["diff"] is not None), None) or \
        next((r["setting"] for r in rows if not r["baseline"] and r["seeds"]), None)
    plots: list[tuple[str, go.Figure | str]] = [("Paired differences", forest)] if any(r["diff"] is not None for r in rows) else []
    for metric in (record.metric, "train_loss"):
        figure = curves(client, record, metric)
        if figure is not None:
            plots.append((f"{metric} curves", figure))
    plots += list(optuna_figures(study_of(record, optuna_storage)).items())
    sections = [_leaderboard_html(rows, record), *(_plot_html(i, title, fig) for i, (title, fig) in enumerate(plots)),
                _figures_html(gradient_figures(client, record, best)), _trials_html(record)]
    verdict = _verdict(rows, record)
    return _PAGE.format(title=html.escape(f"{record.name} — {record.experiment}"), plotly=get_plotlyjs(),
                        name=html.escape(record.name), experiment=html.escape(record.experiment),
                        parent=html.escape(record.parent_run_id), verdict=verdict, body="\n".join(sections))


def _verdict(rows: list[dict[str, Any]], record: SweepRecord) -> str:
    compared = [r for r in rows if r["diff"] is not None]
    if not compared:
        return "No setting could be paired with the baseline (no baseline trial finished on a shared seed)."
    top = compared[0]
    low, high = top["diff_low"], top["diff_high"]
    better = (low > 0) if record.direction == "maximize" else (high < 0)
    worse = (high < 0) if record.direction == "maximize" else (low > 0)
    interval = "one pair, no interval" if low is None or math.isnan(low) else f"95% interval [{low:+.4f}, {high:+.4f}]"
    call = "beats the baseline" if better else "is worse than the baseline" if worse else "is not distinguishable from the baseline"
    return (f"Best setting <b>{html.escape(top['setting'])}</b> {call}: Δ {html.escape(record.metric)} = {top['diff']:+.4f} "
            f"({interval}, {top['pairs']} seed pairs).")


def _number(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _leaderboard_html(rows: list[dict[str, Any]], record: SweepRecord) -> str:
    body = []
    for rank, row in enumerate(rows, 1):
        states = " ".join(f'<span class="state" style="background:{STATE_COLOURS.get(s, "#666")}">{s} {n}</span>'
                          for s, n in sorted(row["states"].items()))
        interval = f"[{_number(row['low'])}, {_number(row['high'])}]"
        diff = "baseline" if row["baseline"] else _number(row["diff"])
        diff_interval = "" if row["baseline"] or row["diff"] is None else f"[{_number(row['diff_low'])}, {_number(row['diff_high'])}]"
        body.append(f"<tr class=\"{'baseline' if row['baseline'] else ''}\"><td>{rank}</td><td>{html.escape(row['setting'])}</td>"
                    f"<td>{row['seeds']}</td><td>{_number(row['mean'])}</td><td>{interval}</td><td>{diff}</td>"
                    f"<td>{diff_interval}</td><td>{row['pairs']}</td><td>{states}</td></tr>")
    metric = html.escape(record.metric)
    return (f'<section><h2>Leaderboard</h2><table id="leaderboard"><thead><tr><th>#</th><th>setting</th><th>seeds</th>'
            f"<th>mean {metric}</th><th>95% interval</th><th>Δ vs baseline</th><th>95% interval of Δ</th><th>pairs</th>"
            f"<th>trials</th></tr></thead><tbody>{''.join(body)}</tbody></table></section>")


def _plot_html(index: int, title: str, figure: go.Figure | str) -> str:
    if isinstance(figure, str):
        return f'<section><h2>{html.escape(title)}</h2><p class="note">{html.escape(figure)}</p></section>'
    spec = figure.to_json()
    return (f'<section><h2>{html.escape(title)}</h2><div class="plot" id="plot-{index}"></div><script>'
            f'(function(){{const f={spec};Plotly.newPlot("plot-{index}",f.data,f.layout,{{responsive:true}});}})();</script></section>')


def _figures_html(shown: dict[str, dict[str, str]]) -> str:
    if not shown:
        return '<section><h2>Gradient norms</h2><p class="note">No gradient-norm figures were logged by these runs.</p></section>'
    columns = "".join(f'<div class="figures"><h3>{html.escape(title)}</h3>' +
                      "".join(f'<img alt="{name}" src="{uri}">' for name, uri in images.items()) + "</div>"
                      for title, images in shown.items())
    return f'<section><h2>Gradient norms: best setting and baseline</h2><div class="side-by-side">{columns}</div></section>'


def _trials_html(record: SweepRecord) -> str:
    rows = []
    for trial in sorted(record.trials, key=lambda t: t["number"]):
        colour = STATE_COLOURS.get(trial["state"], "#666")
        rows.append(f"<tr><td>{trial['number']}</td><td>{html.escape(Pairing().setting_label(trial['params']))}</td><td>{trial['seed']}</td>"
                    f'<td><span class="state" style="background:{colour}">{trial["state"]}</span></td>'
                    f"<td>{_number(trial['objective'])}</td><td>{html.escape(trial.get('error') or '')}</td></tr>")
    return ('<section><h2>Trials</h2><table id="trials"><thead><tr><th>#</th><th>setting</th><th>seed</th><th>state</th>'
            f"<th>objective</th><th>error</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1200px; color: #1f2328; }}
h1 {{ margin-bottom: .2rem; }} .meta {{ color: #656d76; }}
.verdict {{ font-size: 1.15rem; padding: .8rem; background: #f6f8fa; border-radius: 6px; }}
table {{ border-collapse: collapse; width: 100%; font-size: .9rem; }}
th, td {{ border-bottom: 1px solid #d0d7de; padding: .35rem .5rem; text-align: left; }}
tr.baseline {{ background: #ddf4ff; }}
.state {{ color: white; border-radius: 4px; padding: 0 .35rem; margin-right: .2rem; white-space: nowrap; }}
.note {{ color: #656d76; font-style: italic; }}
.side-by-side {{ display: flex; gap: 1rem; }} .figures {{ flex: 1; }} .figures img {{ width: 100%; }}
</style>
<script>{plotly}</script></head>
<body><h1>GHM against the focal baseline</h1>
<p class="meta">sweep <b>{name}</b> · MLflow experiment <b>{experiment}</b> · parent run <code>{parent}</code></p>
<p class="verdict" id="verdict">{verdict}</p>
{body}
</body></html>
"""


def build_dashboard(experiment: str, sweep: str | None = None, *, tracking_uri: str | None = None,
                    optuna_storage: str | None = None, output: Path | None = None) -> Path:
    """Write the dashboard of a sweep (default: ``dashboards/<sweep>.html``) and return its path."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a few small downloads: no progress bars
    client = tracking_client(tracking_uri or default_tracking_uri(Path.cwd()))
    record = load_sweep(client, experiment, sweep)
    storage = optuna_storage or os.environ.get("OPTUNA_STORAGE") or f"sqlite:///{Path.cwd() / 'optuna.db'}"
    path = Path(output or DASHBOARD_DIR / f"{record.name}.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(client, record, storage), encoding="utf-8")
    return path


def serve(path: Path, port: int) -> None:
    """Serve the dashboard's directory on 127.0.0.1 (the file also opens straight from disk)."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"serving http://127.0.0.1:{server.server_address[1]}/{path.name}  (Ctrl-C stops)", flush=True)
        server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ghm.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="ghm_vs_focal", help="MLflow experiment (default: the main job's)")
    parser.add_argument("--sweep", help="the sweep's name (its parent run's sweep_parent tag); default: the latest")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else the embedded store")
    parser.add_argument("--optuna-storage", help="default: OPTUNA_STORAGE, else sqlite optuna.db")
    parser.add_argument("-o", "--output", type=Path, help="default: dashboards/<sweep>.html")
    parser.add_argument("--serve", action="store_true", help="then serve it on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        path = build_dashboard(args.experiment, args.sweep, tracking_uri=args.tracking_uri, optuna_storage=args.optuna_storage,
                               output=args.output)
    except DashboardError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"dashboard: {path}")
    if args.serve:
        serve(path, args.port)


if __name__ == "__main__":
    main()
