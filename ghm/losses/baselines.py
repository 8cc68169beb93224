"""The baselines GHM is measured against: focal loss, plain cross-entropy, smooth L1 and authentic smooth L1.

All are normalised by the number of positives, RetinaNet's convention, and called as
``loss(pred, target, label_weight)`` like the GHM losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from ghm.losses.checks import check_inputs, check_loss_weight, check_number


def authentic_smooth_l1(diff: Tensor, mu: float) -> Tensor:
    """ASL1(d) = sqrt(d^2 + mu^2) - mu, elementwise: smooth L1 with a gradient norm that keeps growing."""
    return torch.sqrt(diff * diff + mu * mu) - mu


def _num_positive_targets(target: Tensor, label_weight: Tensor) -> Tensor:
    """Positive (anchor, class) targets among the valid ones, at least 1: RetinaNet's normaliser."""
    return (target * (label_weight > 0)).sum(dtype=torch.float32).clamp_min(1.0)


def _num_positive_rows(label_weight: Tensor) -> Tensor:
    """Rows (anchors) with any valid coordinate, at least 1: RetinaNet's box-loss normaliser."""
    valid = label_weight > 0
    rows = valid.flatten(1).any(dim=1) if valid.dim() > 1 else valid  # flatten(1), unlike reshape, also takes 0 rows
    return rows.sum(dtype=torch.float32).clamp_min(1.0)


class FocalLoss(nn.Module):
    """Sigmoid focal loss (torchvision's), weighted and divided by the number of positives.

    ``alpha`` in [0, 1] weights the positives (a negative value disables it, as in torchvision);
    ``gamma`` >= 0 is the focusing parameter.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.alpha = check_number("alpha", alpha, low=-1.0, high=1.0)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.loss_weight = check_loss_weight(loss_weight)

    def forward(self, pred: Tensor, target: Tensor, label_weight: Tensor) -> Tensor:
        check_inputs(self, pred, target, label_weight)
        loss = sigmoid_focal_loss(pred.float(), target.float(), alpha=self.alpha, gamma=self.gamma)
        return (loss * label_weight).sum() / _num_positive_targets(target, label_weight) * self.loss_weight


class BCELoss(nn.Module):
    """Plain binary cross-entropy (the paper's CE baseline), weighted and divided by the positives."""

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = check_loss_weight(loss_weight)

    def forward(self, pred: Tensor, target: Tensor, label_weight: Tensor) -> Tensor:
        check_inputs(self, pred, target, label_weight)
        loss = F.binary_cross_entropy_with_logits(pred.float(), target.float(), weight=label_weight.float(), reduction="sum")
        return loss / _num_positive_targets(target, label_weight) * self.loss_weight


class SmoothL1Loss(nn.Module):
    """Smooth L1 with transition ``beta`` (1/9 as in the paper; 0 gives L1), per positive anchor."""

    def __init__(self, beta: float = 1.0 / 9.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.beta = check_number("beta", beta, low=0.0)
        self.loss_weight = check_loss_weight(loss_weight)

    def forward(self, pred: Tensor, target: Tensor, label_weight: Tensor) -> Tensor:
        check_inputs(self, pred, target, label_weight)
        loss = F.smooth_l1_loss(pred.float(), target.float(), beta=self.beta, reduction="none")
        return (loss * label_weight).sum() / _num_positive_rows(label_weight) * self.loss_weight


class ASL1Loss(nn.Module):
    """Authentic smooth L1, ``sqrt(d^2 + mu^2) - mu`` with ``mu`` > 0, per positive anchor."""

    def __init__(self, mu: float = 0.02, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.mu = check_number("mu", mu, low=0.0, low_open=True)
        self.loss_weight = check_loss_weight(loss_weight)

    def forward(self, pred: Tensor, target: Tensor, label_weight: Tensor) -> Tensor:
        check_inputs(self, pred, target, label_weight)
        loss = authentic_smooth_l1(pred.float() - target.float(), self.mu)
        return (loss * label_weight).sum() / _num_positive_rows(label_weight) * self.loss_weight
