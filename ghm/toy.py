"""A synthetic one-stage problem that trains in seconds: live tensors for the figures until the detector lands.

Each of ``anchors`` examples has a feature vector; a few are positives of a long-tailed class
distribution with a class-specific feature shift and box offsets that depend on the features.
A linear head (logits with RetinaNet's prior-probability bias, plus box deltas) is trained with
the configured classification and regression losses, and the last batch is what gets drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ToyBatch:
    """Logits, targets and weights as the losses take them, from the trained head."""

    cls_logits: Tensor
    cls_targets: Tensor
    cls_weights: Tensor
    box_deltas: Tensor
    box_targets: Tensor
    box_weights: Tensor


def make_problem(anchors: int, classes: int, features: int, positive_fraction: float,
                 generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Features, one-hot targets, box targets and box weights of an imbalanced detection-like task."""
    x = torch.randn(anchors, features, generator=generator)
    positive = torch.rand(anchors, generator=generator) < positive_fraction
    frequency = 1.0 / torch.arange(1, classes + 1, dtype=torch.float32)  # long tail
    label = torch.multinomial(frequency, anchors, replacement=True, generator=generator)
    shift = torch.randn(classes, features, generator=generator)
    x[positive] += 0.8 * shift[label[positive]]
    targets = torch.zeros(anchors, classes)
    targets[positive, label[positive]] = 1.0
    mixing = torch.randn(features, 4, generator=generator) / math.sqrt(features)
    box_targets = 0.3 * x @ mixing + 0.05 * torch.randn(anchors, 4, generator=generator)
    box_weights = positive.float()[:, None].expand(anchors, 4).contiguous()
    return x, targets, box_targets, box_weights


def train_toy(cls_loss: nn.Module, reg_loss: nn.Module, *, anchors: int, classes: int, features: int,
              positive_fraction: float, steps: int, lr: float, seed: int) -> tuple[ToyBatch, list[float]]:
    """Train a linear head for ``steps`` full-batch SGD steps; return its last batch and the losses."""
    generator = torch.Generator().manual_seed(seed)
    x, targets, box_targets, box_weights = make_problem(anchors, classes, features, positive_fraction, generator)
    torch.manual_seed(seed)
    cls_head, box_head = nn.Linear(features, classes), nn.Linear(features, 4)
    nn.init.constant_(cls_head.bias, -math.log((1 - 0.01) / 0.01))
    optimizer = torch.optim.SGD([*cls_head.parameters(), *box_head.parameters()], lr=lr, momentum=0.9)
    weights = torch.ones_like(targets)
    history = []
    for _ in range(steps):
        logits, deltas = cls_head(x), box_head(x)
        loss = cls_loss(logits, targets, weights) + reg_loss(deltas, box_targets, box_weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    with torch.no_grad():
        batch = ToyBatch(cls_head(x), targets, weights, box_head(x), box_targets, box_weights)
    return batch, history
