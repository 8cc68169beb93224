"""Per-region loop transcription of the official GHM semantics: the oracle for tests, the baseline for benchmarks.

Deliberately written like the public implementations (a Python loop over the regions with a
host synchronisation per region), so the vectorised losses in :mod:`ghm.losses` can be checked
against it and timed beside it. Not for training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class LoopGHM:
    """Shared loop: per non-empty region, weight tot / k (or tot / EMA), then / #non-empty regions."""

    def __init__(self, bins: int, momentum: float, last_edge: float) -> None:
        self.bins = bins
        self.momentum = momentum
        self.edges = [i / bins for i in range(bins + 1)]
        self.edges[-1] = last_edge
        self.acc_sum = [0.0] * bins

    def weights(self, g: Tensor, valid: Tensor, tot: float) -> Tensor:
        weights = torch.zeros_like(g)
        nonempty = 0
        for i in range(self.bins):
            inds = (g >= self.edges[i]) & (g < self.edges[i + 1]) & valid
            num_in_bin = inds.sum().item()
            if num_in_bin > 0:
                if self.momentum > 0:
                    self.acc_sum[i] = self.momentum * self.acc_sum[i] + (1 - self.momentum) * num_in_bin
                    weights[inds] = tot / self.acc_sum[i]
                else:
                    weights[inds] = tot / num_in_bin
                nonempty += 1
        if nonempty > 0:
            weights = weights / nonempty
        return weights


class LoopGHMC(LoopGHM):
    """GHM-C as the official code computes it."""

    def __init__(self, bins: int = 30, momentum: float = 0.0, loss_weight: float = 1.0) -> None:
        super().__init__(bins, momentum, last_edge=1.0 + 1e-6)
        self.loss_weight = loss_weight

    def __call__(self, pred: Tensor, target: Tensor, label_weight: Tensor) -> Tensor:
        g = torch.abs(pred.sigmoid().detach() - target)
        valid = label_weight > 0
        tot = max(valid.float().sum().item(), 1.0)
        weights = self.weights(g, valid, tot)
        loss = F.binary_cross_entropy_with_logits(pred, target, weights, reduction="sum") / tot
        return loss * self.loss_weight


class LoopGHMR(LoopGHM):
    """GHM-R as the official code computes it."""

    def __init__(self, mu: float = 0.02, bins: int = 10, momentum: float = 0.0, loss_weight: float = 1.0) -> None:
        super().__init__(bins, momentum, last_edge=1e3)
        self.mu = mu
        self.loss_weight = loss_weight

    def __call__(self, pred: Tensor, target: Tensor, label_weight: Tensor) -> Tensor:
        diff = pred - target
        loss = torch.sqrt(diff * diff + self.mu * self.mu) - self.mu
        g = torch.abs(diff / torch.sqrt(self.mu * self.mu + diff * diff)).detach()
        tot = max(label_weight.float().sum().item(), 1.0)
        weights = self.weights(g, label_weight > 0, tot)
        return (loss * weights).sum() / tot * self.loss_weight
