"""The dashboard page: one self-contained HTML file, Plotly's script and the figures embedded (it opens offline).

Does GHM beat the focal baseline here, and with which settings? The page answers at a glance: a
leaderboard of settings (mean objective over seeds with its 95% interval, the paired difference
against the baseline with its 95% interval, best first), per-epoch curves by setting (mean with a
band over seeds), Optuna's optimisation history, parameter importances, parallel coordinates and
slices, the gradient-norm figures of the best setting beside the baseline's, and every trial with
its state (pruned and failed ones included). A chart is a function of :mod:`ghm.dashboard.charts`
listed in :func:`render`.
"""

from __future__ import annotations

import html
import math
from typing import Any

import plotly.graph_objects as go
from mlflow.tracking import MlflowClient
from plotly.offline import get_plotlyjs

from ghm.comparison.record import SweepRecord, TrialRecord
from ghm.dashboard.charts import curves, gradient_figures, leaderboard, optuna_figures, study_of, tuning_curves
from ghm.dashboard.source import SweepView

STATE_COLOURS = {"finished": "#1a7f37", "reused": "#0969da", "pruned": "#9a6700", "failed": "#cf222e"}


def render(client: MlflowClient, view: SweepView, optuna_storage: str | None = None) -> str:
    """The page of one sweep (``optuna_storage``: where a sweep recorded before version 2 keeps its study)."""
    record = view.record
    rows, forest = leaderboard(view)
    best = next((r["setting"] for r in rows if not r["baseline"] and r["diff"] is not None), None) or \
        next((r["setting"] for r in rows if not r["baseline"] and r["seeds"]), None)
    plots: list[tuple[str, go.Figure | str]] = [("Paired differences", forest)] if any(r["diff"] is not None for r in rows) else []
    tuned = tuning_curves(record)
    if tuned is not None:
        plots.append(("Tuning curves", tuned))
    for metric in (record.metric, "train_loss"):
        figure = curves(client, view, metric)
        if figure is not None:
            plots.append((f"{metric} curves", figure))
    if not record.tuning:  # a tuned comparison's arms search different spaces: its tuning curves stand for Optuna's plots
        plots += list(optuna_figures(study_of(record, optuna_storage)).items())
    sections = [_leaderboard_html(rows, record), _tuning_html(record), *(_plot_html(i, title, fig) for i, (title, fig) in enumerate(plots)),
                _figures_html(gradient_figures(client, view, best)), _trials_html(record)]
    verdict = _verdict(rows, record)
    return _PAGE.format(title=html.escape(f"{record.name} — {view.experiment}"), plotly=get_plotlyjs(),
                        name=html.escape(record.name), experiment=html.escape(view.experiment),
                        parent=html.escape(view.parent_run_id), verdict=verdict, body="\n".join(sections))


def _verdict(rows: list[dict[str, Any]], record: SweepRecord) -> str:
    compared = [r for r in rows if r["diff"] is not None]
    if not compared:
        return "No setting could be paired with the baseline (no baseline trial finished on a shared seed)."
    top = compared[0]
    low, high = top["diff_low"], top["diff_high"]
    better = (low > 0) if record.direction == "maximize" else (high < 0)
    worse = (high < 0) if record.direction == "maximize" else (low > 0)
    comparison = next(c for c in record.comparisons if c.setting == top["setting"])
    interval = ("one pair, no interval" if low is None or math.isnan(low)
                else f"{comparison.confidence:.3g} interval [{low:+.4f}, {high:+.4f}]")
    call = "beats the baseline" if better else "is worse than the baseline" if worse else "is not distinguishable from the baseline"
    power = (f" P(better) {comparison.p_improve:.2f} [{comparison.p_improve_low:.2f}, {comparison.p_improve_high:.2f}] over the seeds; "
             f"the smallest difference they resolve with 80% power: {_number(comparison.mde)}")
    if comparison.effect:
        power += f"; {comparison.effect:g} needs {comparison.seeds_needed or 'n/a'} seed pairs"
    return (f"Best setting <b>{html.escape(top['setting'])}</b> {call}: Δ {html.escape(record.metric)} = {top['diff']:+.4f} "
            f"({interval}, {top['pairs']} seed pairs).{html.escape(power)}.")


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


def _tuning_html(record: SweepRecord) -> str:
    """How fair the verdict is: each arm's budget, search space, best settings and warnings; and the notes on every verdict."""
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in record.notes)
    if not record.tuning:
        return f'<section id="provenance"><h2>How the settings were chosen</h2>{notes}</section>' if notes else ""
    rows = []
    for arm in record.tuning:
        counts = ", ".join(f"{n} {state}" for state, n in arm.counts.items() if n)
        space = "<br>".join(html.escape(f"{key}: {_space(value)}") for key, value in arm.space.items())
        best = "<br>".join(html.escape(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}") for k, v in (arm.best or {}).items())
        warnings = "".join(f'<div class="warning">{html.escape(w)}</div>' for w in arm.warnings)
        rows.append(f"<tr><td>{html.escape(arm.label)}</td><td>{html.escape(' '.join(arm.overrides))}</td>"
                    f"<td>{arm.budget} x {len(arm.seeds)} seeds ({html.escape(counts)})</td><td>{space}</td>"
                    f"<td>{_number(arm.best_value)}</td><td>{best or 'n/a'}</td><td>{warnings}</td></tr>")
    return ('<section id="tuning"><h2>Tuned arms</h2><table id="arms"><thead><tr><th>arm</th><th>overrides</th><th>budget</th>'
            "<th>searched</th><th>best (tuning seeds)</th><th>best settings</th><th>warnings</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{notes}</section>")


def _space(encoded: dict[str, Any]) -> str:
    """An Optuna distribution's JSON as a range, e.g. ``[0.005, 0.16] log``."""
    attributes = encoded.get("attributes", {})
    if "choices" in attributes:
        return "{" + ", ".join(map(str, attributes["choices"])) + "}"
    return f"[{attributes.get('low')}, {attributes.get('high')}]" + (" log" if attributes.get("log") else "")


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
    for trial in sorted(record.trials, key=lambda t: t.number):
        colour = STATE_COLOURS.get(trial.state, "#666")
        rows.append(f"<tr><td>{trial.number}</td><td>{html.escape(record.pairing.setting_label(trial.params))}</td>"
                    f"<td>{html.escape(_role(trial))}</td><td>{trial.seed}</td>"
                    f'<td><span class="state" style="background:{colour}">{trial.state}</span></td>'
                    f"<td>{_number(trial.objective)}</td><td>{html.escape(trial.error or '')}</td></tr>")
    return ('<section><h2>Trials</h2><table id="trials"><thead><tr><th>#</th><th>setting</th><th>role</th><th>seed</th><th>state</th>'
            f"<th>objective</th><th>error</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>")


def _role(trial: TrialRecord) -> str:
    """A tuned comparison's job: its arm's search trial, or its best's confirmation; other sweeps' trials have none."""
    if trial.arm is None:
        return ""
    return f"{trial.arm}: search trial {trial.search_trial}" if trial.search_trial is not None else f"{trial.arm}: confirmation"


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
.warning {{ color: #9a6700; font-weight: 600; }}
.side-by-side {{ display: flex; gap: 1rem; }} .figures {{ flex: 1; }} .figures img {{ width: 100%; }}
</style>
<script>{plotly}</script></head>
<body><h1>GHM against the focal baseline</h1>
<p class="meta">sweep <b>{name}</b> · MLflow experiment <b>{experiment}</b> · parent run <code>{parent}</code></p>
<p class="verdict" id="verdict">{verdict}</p>
{body}
</body></html>
"""
