"""GHM-C and GHM-R: losses re-weighted by the inverse density of their examples' gradient norms.

Both follow the official semantics exactly (valid = weight > 0, unit regions with division by the
number of non-empty regions, EMA of the counts, sum / tot; see :mod:`ghm.losses.density`), with the
gradient computed alongside the loss so that neither pass synchronises with the host.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ghm.losses.checks import check_inputs, check_loss_weight, check_number
from ghm.losses.density import DensityStats, ExactDensity, UnitRegionDensity

DENSITIES = ("unit", "exact")


def _upcast(tensor: Tensor) -> Tensor:
    """fp16/bf16 to float32 (so counts, g = 1 and the loss keep their precision); float64 stays."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _weighted_bce_sum(logits: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """``sum(weights * BCE(logits, target))``, the value of ``F.binary_cross_entropy_with_logits(..., reduction="sum")``.

    On the CPU torch's ``log1p`` (inside BCE's log-sigmoid) is not vectorised: at COCO scale it was
    half of GHM-C's time. There ``max(x, 0) - x t + log1p(e)``, e = exp(-|x|), takes log1p from the
    vectorised ``log`` by Goldberg's identity ``log1p(e) = e log(u) / (u - 1)``, u = 1 + e (a few ulps;
    e itself where u rounds to 1). Only the value: GHM-C's gradient is computed in closed form.
    """
    if logits.device.type != "cpu":
        return F.binary_cross_entropy_with_logits(logits, target, weight=weights, reduction="sum")
    e = logits.abs().neg_().exp_()
    u = e + 1
    rounds_to_one = u == 1
    log1p = torch.log(u).mul_(e).div_(u.sub_(1))
    log1p = torch.where(rounds_to_one, e, log1p)
    return logits.clamp(min=0).sub_(logits * target).add_(log1p).mul_(weights).sum()


class _LossWithGradient(torch.autograd.Function):
    """A loss value whose gradient with respect to ``pred`` was computed alongside it.

    GHM's weights are constants of the backward pass (g is detached, as in the paper), so the
    gradient is ``weight * d loss / d pred`` elementwise: computing it in the forward pass saves
    the autograd graph of the elementwise loss and a second sigmoid.
    """

    @staticmethod
    def forward(ctx: Any, value: Tensor, pred: Tensor, grad_pred: Tensor) -> Tensor:
        ctx.save_for_backward(grad_pred)
        ctx.pred_dtype = pred.dtype
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[None, Tensor, None]:
        (grad_pred,) = ctx.saved_tensors
        return None, (grad_pred * grad_output).to(ctx.pred_dtype), None


class _GHMLoss(nn.Module):
    """A loss re-weighted by a gradient density: ``sum(weight * loss) / tot * loss_weight``."""

    def __init__(self, density: UnitRegionDensity | ExactDensity, loss_weight: float) -> None:
        super().__init__()
        self.density = density
        self.loss_weight = check_loss_weight(loss_weight)

    @property
    def stats(self) -> DensityStats | None:
        """g, weights, region counts and tot of the last forward (``None`` before the first)."""
        return self.density.stats

    def _check(self, pred: Tensor, target: Tensor, label_weight: Tensor) -> None:
        check_inputs(self, pred, target, label_weight)
        if target.requires_grad:
            raise ValueError(f"{type(self).__name__}: target must not require grad; GHM differentiates pred only")

    def _scale(self, tot: Tensor) -> Tensor:
        """``loss_weight * world_size / tot`` as a float32 scalar tensor."""
        return (self.loss_weight * self.density.world_scale() / tot).float()


class GHMC(_GHMLoss):
    """GHM-C: binary cross-entropy re-weighted by the inverse gradient density of g = |sigmoid(x) - t|.

    Args:
        bins: number of unit regions (epsilon = 1 / bins).
        momentum: EMA momentum of the region counts, 0 <= momentum < 1 (0: none).
        loss_weight: factor on the loss.
        density: ``"unit"`` (unit regions, the default) or ``"exact"`` (the paper's sliding window).
        dist_reduce: under ``torch.distributed``, weight by the density over all ranks.
        ema_start: ``"zero"`` (official) or ``"first"``: where the EMA of a region's count starts.

    Under DDP each rank returns ``world_size * sum_local(weight * bce) / tot_global``, so that DDP's
    gradient averaging yields exactly the gradient of one process holding the whole batch.
    """

    def __init__(self, bins: int = 30, momentum: float = 0.0, loss_weight: float = 1.0,
                 density: str = "unit", dist_reduce: bool = True, ema_start: str = "zero") -> None:
        if density == "unit":
            estimator: UnitRegionDensity | ExactDensity = UnitRegionDensity(bins, momentum, dist_reduce, ema_start)
        elif density == "exact":
            if momentum != 0:
                raise ValueError(f"momentum applies to density='unit' only; density='exact' needs momentum=0, got {momentum!r}")
            estimator = ExactDensity(bins, dist_reduce)
        else:
            raise ValueError(f"density must be one of {DENSITIES}, got {density!r}")
        super().__init__(estimator, loss_weight)

    def forward(self, pred: Tensor, target: Tensor, label_weight: Tensor) -> Tensor:
        self._check(pred, target, label_weight)
        with torch.no_grad():
            logits, target = _upcast(pred), _upcast(target)
            grad_bce = logits.sigmoid().sub_(target)  # d BCE / dx = sigmoid(x) - t; g is its norm
            valid = label_weight > 0
            weights, tot = self.density(grad_bce.abs(), valid, valid.sum(dtype=torch.float64))
            scale = self._scale(tot)
            value = _weighted_bce_sum(logits, target, weights) * scale
            grad_pred = grad_bce.mul_(weights).mul_(scale)
        return _LossWithGradient.apply(value, pred, grad_pred)


class GHMR(_GHMLoss):
    """GHM-R: authentic smooth L1 re-weighted by the inverse density of g = |d| / sqrt(d^2 + mu^2).

    ``tot`` is the sum of the label weights (4 x #positives in RetinaNet), as in the official code.
    Arguments as :class:`GHMC`, plus ``mu`` (> 0), the ASL1 parameter; unit regions only.
    """

    def __init__(self, mu: float = 0.02, bins: int = 10, momentum: float = 0.0, loss_weight: float = 1.0,
                 dist_reduce: bool = True, ema_start: str = "zero") -> None:
        super().__init__(UnitRegionDensity(bins, momentum, dist_reduce, ema_start), loss_weight)
        self.mu = check_number("mu", mu, low=0.0, low_open=True)

    def forward(self, pred: Tensor, target: Tensor, label_weight: Tensor) -> Tensor:
        self._check(pred, target, label_weight)
        with torch.no_grad():
            diff = _upcast(pred) - _upcast(target)
            root = torch.sqrt(diff * diff + self.mu * self.mu)
            grad_asl1 = diff / root  # d ASL1 / dd; g is its norm
            weights, tot = self.density(grad_asl1.abs(), label_weight > 0, label_weight.sum(dtype=torch.float64))
            scale = self._scale(tot)
            value = (weights * (root - self.mu)).sum() * scale
            grad_pred = grad_asl1.mul_(weights).mul_(scale)
        return _LossWithGradient.apply(value, pred, grad_pred)
