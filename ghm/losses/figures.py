"""The paper's diagnostic figures, drawn from live tensors of a training batch.

* Gradient-norm distribution: histogram of g with log-scale counts, for classification
  (g = |sigmoid(x) - t|) and regression (g = |d| / sqrt(d^2 + mu^2)).
* Reformulated gradient norm: the per-example gradient norm each loss produces, against g for
  CE, FL and GHM-C, and against |d| for SL1, ASL1 and GHM-R. GHM's curves use the density of the
  batch at hand (unit regions, no EMA), so they show what GHM does to this very batch.

Figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot state), safe in workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from ghm.losses.density import UnitRegionDensity, classification_gradient_norm, region_weights, regression_gradient_norm

_GRID = 400


def _valid_values(g: Tensor, valid: Tensor) -> np.ndarray:
    return g.detach()[valid].double().cpu().numpy()


def batch_region_weights(g: Tensor, valid: Tensor, bins: int) -> np.ndarray:
    """Unit-region GHM weights (beta = tot / (k * #non-empty)) of one batch, without EMA."""
    _, counts = UnitRegionDensity(bins, dist_reduce=False).region_counts(g.detach().float(), valid)
    return region_weights(counts, counts, counts.sum().clamp_min(1.0)).cpu().numpy()


def gradient_norm_histogram(g: Tensor, valid: Tensor, *, title: str, bins: int = 30) -> Figure:
    """Histogram of the valid elements' gradient norms over [0, 1], counts on a log scale."""
    values = _valid_values(g, valid)
    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue", edgecolor="white")
    ax.set_yscale("log")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("gradient norm g")
    ax.set_ylabel("number of examples")
    ax.set_title(f"{title} ({values.size} examples)")
    return fig


def focal_gradient_norm(g: np.ndarray, gamma: float) -> np.ndarray:
    """|d FL / dx| as a function of g = |p - t| (no alpha): g^gamma * (g - gamma (1 - g) ln(1 - g))."""
    one_minus = np.clip(1.0 - g, 1e-12, None)
    return g**gamma * (g - gamma * one_minus * np.log(one_minus))


def classification_gradient_curves(g: Tensor, valid: Tensor, *, bins: int = 30, gamma: float = 2.0) -> Figure:
    """Reformulated gradient norm against g for CE (g itself), FL and GHM-C on this batch's density."""
    x = np.linspace(0.0, 1.0, _GRID + 1)[1:-1]
    beta = batch_region_weights(g, valid, bins)[np.minimum((x * bins).astype(int), bins - 1)]
    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, x, label="CE")
    ax.plot(x, focal_gradient_norm(x, gamma), label=f"FL (gamma={gamma:g})")
    ax.plot(x, np.where(beta > 0, x * beta, np.nan), label=f"GHM-C ({bins} regions)")
    ax.set_yscale("log")
    ax.set_xlabel("original gradient norm g")
    ax.set_ylabel("reformulated gradient norm")
    ax.set_title("Classification")
    ax.legend()
    return fig


def regression_gradient_curves(g: Tensor, valid: Tensor, *, mu: float = 0.02, bins: int = 10,
                               beta: float = 1.0 / 9.0, max_abs_d: float = 1.0) -> Figure:
    """Reformulated gradient norm against |d| for SL1, ASL1 and GHM-R on this batch's density."""
    d = np.linspace(0.0, max_abs_d, _GRID + 1)[1:]
    asl1 = d / np.sqrt(d * d + mu * mu)
    weight = batch_region_weights(g, valid, bins)[np.minimum((asl1 * bins).astype(int), bins - 1)]
    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(d, np.minimum(d / beta, 1.0) if beta > 0 else np.ones_like(d), label=f"SL1 (beta={beta:.3g})")
    ax.plot(d, asl1, label=f"ASL1 (mu={mu:g})")
    ax.plot(d, np.where(weight > 0, asl1 * weight, np.nan), label=f"GHM-R ({bins} regions)")
    ax.set_yscale("log")
    ax.set_xlabel("|d|")
    ax.set_ylabel("reformulated gradient norm")
    ax.set_title("Regression")
    ax.legend()
    return fig


def batch_figures(cls_logits: Tensor, cls_targets: Tensor, cls_weights: Tensor,
                  box_deltas: Tensor, box_targets: Tensor, box_weights: Tensor, *,
                  cls_bins: int = 30, reg_bins: int = 10, mu: float = 0.02, gamma: float = 2.0,
                  beta: float = 1.0 / 9.0) -> dict[str, Figure]:
    """All four figures for one batch: the training loop calls this on its live tensors.

    Inputs are as the losses take them (logits and one-hot targets ``[N, C]``, deltas ``[M, 4]``,
    label weights where > 0 marks the valid elements).
    """
    g_cls = classification_gradient_norm(cls_logits, cls_targets)
    g_reg = regression_gradient_norm(box_deltas - box_targets, mu)
    valid_cls, valid_reg = cls_weights > 0, box_weights > 0
    return {
        "gradient_norm_cls": gradient_norm_histogram(g_cls, valid_cls, title="Classification", bins=cls_bins),
        "gradient_norm_reg": gradient_norm_histogram(g_reg, valid_reg, title="Regression", bins=reg_bins),
        "reformulated_cls": classification_gradient_curves(g_cls, valid_cls, bins=cls_bins, gamma=gamma),
        "reformulated_reg": regression_gradient_curves(g_reg, valid_reg, mu=mu, bins=reg_bins, beta=beta),
    }


def save_figures(figures: dict[str, Figure], out_dir: str | Path, *, prefix: str = "") -> dict[str, Path]:
    """Write each figure as ``<out_dir>/<prefix><name>.png`` and return the paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fig in figures.items():
        paths[name] = out / f"{prefix}{name}.png"
        fig.savefig(paths[name], dpi=110)
    return paths

