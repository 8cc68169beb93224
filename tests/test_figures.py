"""The diagnostic figures, from live tensors, against independent computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.ops import sigmoid_focal_loss

from ghm.losses.figures import batch_figures, batch_region_weights, focal_gradient_norm, save_figures


def test_focal_gradient_norm_matches_autograd() -> None:
    g = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    x = (torch.log(g) - torch.log1p(-g)).requires_grad_()  # negatives: sigmoid(x) = g
    sigmoid_focal_loss(x, torch.zeros_like(x), alpha=-1, gamma=2.0, reduction="sum").backward()
    np.testing.assert_allclose(focal_gradient_norm(g.numpy(), 2.0), x.grad.abs().numpy(), rtol=1e-10)


def test_batch_region_weights_are_tot_over_count_and_nonempty() -> None:
    g = torch.tensor([0.05, 0.07, 0.08, 0.95, 0.5])
    valid = torch.tensor([True, True, True, True, False])
    # Regions of 5: counts [3, 0, 0, 0, 1], tot 4, two non-empty: 4 / (3 * 2) and 4 / (1 * 2).
    np.testing.assert_allclose(batch_region_weights(g, valid, 5), [4 / 6, 0, 0, 0, 2.0])


def test_batch_figures_draw_the_live_histogram(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 10, generator=gen) * 2 - 4
    targets = (torch.rand(2000, 10, generator=gen) < 0.01).float()
    weights = (torch.rand(2000, 10, generator=gen) < 0.95).float()
    deltas, box_targets = torch.randn(50, 4, generator=gen) * 0.1, torch.zeros(50, 4)
    box_weights = torch.ones(50, 4)
    figures = batch_figures(logits, targets, weights, deltas, box_targets, box_weights, cls_bins=30, reg_bins=10)
    assert set(figures) == {"gradient_norm_cls", "gradient_norm_reg", "reformulated_cls", "reformulated_reg"}

    bars = figures["gradient_norm_cls"].axes[0].patches
    expected, _ = np.histogram(((logits.sigmoid() - targets).abs())[weights > 0].numpy(), bins=30, range=(0, 1))
    np.testing.assert_array_equal([bar.get_height() for bar in bars], expected)
    assert figures["gradient_norm_cls"].axes[0].get_yscale() == "log"
    labels = [line.get_label() for line in figures["reformulated_reg"].axes[0].lines]
    assert labels[0].startswith("SL1") and labels[1].startswith("ASL1") and labels[2].startswith("GHM-R")

    paths = save_figures(figures, tmp_path, prefix="step0_")
    for name, path in paths.items():
        assert path == tmp_path / f"step0_{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
