"""The studies' figures, drawn from the MLflow store into ``docs/figures/`` by ``python -m ghm.reproduction``.

* :func:`schedule_figure`: each arm's validation mAP against training steps, one curve per schedule length
  (mean over seeds): where GHM's curve stops rising, and where, if anywhere, it crosses focal loss's.
* :func:`axes_figure`: GHM's paired difference from focal loss (95% t interval) against each study's axis
  levels, one panel per axis: along which axes the difference moves.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from ghm.comparison.record import FINISHED, REUSED
from ghm.comparison.settings import setting_of
from ghm.dashboard.source import SweepView
from ghm.reproduction.studies import POINTS, Study, results


def schedule_curves(client: MlflowClient, view: SweepView, metric: str = "mAP") -> dict[tuple[str, str], dict[int, float]]:
    """Per (setting, condition): the mean over seeds of ``metric`` at each epoch (MLflow's per-epoch history)."""
    curves: dict[tuple[str, str], dict[int, list[float]]] = {}
    record = view.record
    for trial in record.trials:
        if trial.search_trial is not None or trial.state not in (FINISHED, REUSED) or not trial.mlflow_run_id:
            continue
        label = trial.arm or setting_of(trial, record.pairing)
        condition = " ".join(f"{k}={v}" for k, v in trial.condition.items())
        for point in client.get_metric_history(trial.mlflow_run_id, metric):
            curves.setdefault((label, condition), {}).setdefault(point.step, []).append(point.value)
    return {key: {step: statistics.fmean(values) for step, values in sorted(by_step.items())} for key, by_step in curves.items()}


def schedule_figure(client: MlflowClient, view: SweepView, output: Path, steps_per_epoch: int = 100) -> Path:
    """Both arms' mAP against training steps for every schedule length of the sweep (its ``train.epochs`` conditions)."""
    curves = schedule_curves(client, view)
    lengths = sorted({condition for _, condition in curves}, key=lambda c: int(c.split("=")[-1]) if "=" in c else 0)
    colours = colormaps["viridis"]
    figure = Figure(figsize=(8, 4.5))
    axis = figure.subplots()
    for index, condition in enumerate(lengths):
        colour = colours(index / max(1, len(lengths) - 1))
        for (label, where), curve in sorted(curves.items()):
            if where != condition:
                continue
            style = "-" if label == view.record.pairing.baseline_value or label.startswith("focal") else "--"
            axis.plot([s * steps_per_epoch for s in curve], [v * POINTS for v in curve.values()], style, color=colour,
                      label=f"{label}, {condition or 'default'}", marker="o" if style == "-" else "s", markersize=3)
    axis.set_xscale("log")
    axis.set_xlabel("training steps (8 images each; log scale)")
    axis.set_ylabel("val mAP x 100")
    axis.set_title("Focal (solid) and GHM-C + GHM-R (dashed) by schedule length", fontsize=10)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    return output


def axes_figure(client: MlflowClient, views: dict[Study, SweepView], output: Path) -> Path:
    """GHM's paired difference from focal loss (x100, 95% t interval) at each level of each study's axis, a panel per axis."""
    panels = [(study, view) for study, view in views.items() if study.axis]
    figure = Figure(figsize=(3.2 * max(1, len(panels)), 3.6))
    axes = figure.subplots(1, max(1, len(panels)), sharey=True, squeeze=False)
    for axis, (study, view) in zip(axes[0], panels, strict=True):
        found = sorted(results(client, view), key=lambda r: float(r.condition.get(study.axis, "0")))
        levels = [r.condition.get(study.axis, "?") for r in found]
        means = [r.comparison.mean * POINTS for r in found]
        low = [(r.comparison.mean - r.comparison.t_low) * POINTS for r in found]
        high = [(r.comparison.t_high - r.comparison.mean) * POINTS for r in found]
        axis.errorbar(range(len(found)), means, yerr=[low, high], fmt="o", capsize=4)
        axis.axhline(0, color="#888", linestyle="--", linewidth=1)
        axis.set_xticks(range(len(found)), levels)
        axis.set_xlabel(study.axis)
        axis.set_title(study.title, fontsize=8)
        axis.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("GHM - focal, mAP x 100 (95% t CI)")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    return output
