"""Classification and regression losses of the GHM paper, all called as ``loss(pred, target, label_weight)``.

Every module takes predictions, targets and label weights of one shape and returns a scalar
tensor, so the detector can combine any classification loss with any regression loss named in
its config (see :data:`CLASSIFICATION_LOSSES`, :data:`REGRESSION_LOSSES` and :func:`build_loss`).

* Classification, logits ``[N, C]`` against one-hot float targets: :class:`GHMC`,
  :class:`FocalLoss`, :class:`BCELoss`.
* Regression, deltas ``[N, 4]`` against target deltas: :class:`GHMR`, :class:`SmoothL1Loss`,
  :class:`ASL1Loss`.

GHM-C and GHM-R follow the official semantics exactly (valid = weight > 0, unit regions with
division by the number of non-empty regions, EMA of the counts, sum / tot). The baselines are
normalised by the number of positives, RetinaNet's convention.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torchvision.ops import sigmoid_focal_loss

from ghm.density import (
    DensityStats,
    ExactDensity,
    UnitRegionDensity,
)

DENSITIES = ("unit", "exact")


def _check_number(name: str, value: object, *, low: float, high: float = float("inf"),
                  low_open: bool = False, high_open: bool = False) -> float:
    """Return ``value`` as a float if it lies in the interval, else raise a ValueError naming it."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {bounds}, got {value!r}")
    return float(value)


class NonFiniteInputError(ValueError):
    """NaN or inf in a loss's predictions or targets (a diverged model, or broken targets)."""


def _check_finite(name: str, tensor: Tensor) -> None:
    """Refuse NaN/inf inputs, which would otherwise turn into NaN weights and a NaN loss.

    Min and max propagate NaN and inf, so one fused reduction finds them. On the CPU the error is
    raised here; on CUDA an asynchronous device assertion avoids a host synchronisation (it
    aborts the CUDA context, as any non-finite loss would end the run).
    """
    if tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor.detach())
    finite = torch.isfinite(low) & torch.isfinite(high)
    message = f"{name} contains non-finite values (NaN or inf)"
    if tensor.device.type == "cpu":
        if not bool(finite):
            bad = int((~torch.isfinite(tensor.detach())).sum())
            raise NonFiniteInputError(f"{message}: {bad} of {tensor.numel()} elements")
    else:
        torch._assert_async(finite, message)


def _check_inputs(loss: nn.Module, pred: Tensor, target: Tensor, label_weight: Tensor) -> None:
    """Same shapes, floating predictions, finite predictions and targets."""
    name = type(loss).__name__
    if not (pred.shape == target.shape == label_weight.shape):
        raise ValueError(
            f"{name}: pred, target and label_weight must have the same shape, got "
            f"{tuple(pred.shape)}, {tuple(target.shape)} and {tuple(label_weight.shape)}"
        )
    if not pred.is_floating_point():
        raise ValueError(f"{name}: pred must be a floating-point tensor, got {pred.dtype}")
    _check_finite(f"{name}: pred", pred)
    _check_finite(f"{name}: target", target)


def _check_loss_weight(loss_weight: object) -> float:
    return _check_number("loss_weight", loss_weight, low=0.0)


def _upcast(tensor: Tensor) -> Tensor:
    """fp16/bf16 to float32 (so counts, g = 1 and the loss keep their precision); float64 stays."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def authentic_smooth_l1(diff: Tensor, mu: float) -> Tensor:
    """ASL1(d) = sqrt(d^2 + mu^2) - mu, elementwise: smooth L1 with a gradient norm that keeps growing."""
    return torch.sqrt(diff * diff + mu * mu) - mu


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
        self.loss_weight = _check_loss_weight(loss_weight)

    @property
    def stats(self) -> DensityStats | None:
        """g, weights, region counts and tot of the last forward (``None`` before the first)."""
        return self.density.stats

    def _check(self, pred: Tensor, target: Tensor, label_weight: Tensor) -> None:
        _check_inputs(self, pred, target, label_weight)
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

    Under DDP each rank returns ``world_size * sum_local(weight * bce) / tot_global``, so that DDP's
    gradient averaging yields exactly the gradient of one process holding the whole batch.
    """

    def __init__(self, bins: int = 30, momentum: float = 0.0, loss_weight: float = 1.0,
                 density: str = "unit", dist_reduce: bool = True) -> None:
        if density == "unit":
            estimator: UnitRegionDensity | ExactDensity = UnitRegionDensity(bins, momentum, dist_reduce)
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
            value = F.binary_cross_entropy_with_logits(logits, target, weight=weights, reduction="sum") * scale
            grad_pred = grad_bce.mul_(weights).mul_(scale)
        return _LossWithGradient.apply(value, pred, grad_pred)


class GHMR(_GHMLoss):
    """GHM-R: authentic smooth L1 re-weighted by the inverse density of g = |d| / sqrt(d^2 + mu^2).

    ``tot`` is the sum of the label weights (4 x #positives in RetinaNet), as in the official code.
    Arguments as :class:`GHMC`, plus ``mu`` (> 0), the ASL1 parameter; unit regions only.
    """

    def __init__(self, mu: float = 0.02, bins: int = 10, momentum: float = 0.0, loss_weight: float = 1.0,
                 dist_reduce: bool = True) -> None:
        super().__init__(UnitRegionDensity(bins, momentum, dist_reduce), loss_weight)
        self.mu = _check_number("mu", mu, low=0.0, low_open=True)

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


def _num_positive_targets(target: Tensor, label_weight: Tensor) -> Tensor:
    """Positive (anchor, class) targets among the valid ones, at least 1: RetinaNet's normaliser."""
    return (target * (label_weight > 0)).sum(dtype=torch.float32).clamp_min(1.0)


def _num_positive_rows(label_weight: Tensor) -> Tensor:
    """Rows (anchors) with any valid coordinate, at least 1: RetinaNet's box-loss normaliser."""
    return (label_weight > 0).reshape(label_weight.shape[0], -1).any(dim=1).sum(dtype=torch.float32).clamp_min(1.0)


class FocalLoss(nn.Module):
    """Sigmoid focal loss (torchvision's), weighted and divided by the number of positives.

    ``alpha`` in [0, 1] weights the positives (a negative value disables it, as in torchvision);
    ``gamma`` >= 0 is the focusing parameter.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.alpha = _check_number("alpha", alpha, low=-1.0, high=1.0)
        self.gamma = _check_number("gamma", gamma, low=0.0)
        self.loss_weight = _check_loss_weight(loss_weight)

    def forward(self, pred: Tensor, target: Tensor, label_weight: Tensor) -> Tensor:
        _check_inputs(self, pred, target, label_weight)
        loss = sigmoid_focal_loss(pred.float(), target.float(), alpha=self.alpha, gamma=self.gamma)
        return (loss * label_weight).sum() / _num_positive_targets(target, label_weight) * self.loss_weight


class BCELoss(nn.Module):
    """Plain binary cross-entropy (the paper's CE baseline), weighted and divided by the positives."""

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = _check_loss_weight(loss_weight)

    def forward(self, pred: Tensor, target: Tensor, label_weight: Tensor) -> Tensor:
        _check_inputs(self, pred, target, label_weight)
        loss = F.binary_cross_entropy_with_logits(pred.float(), target.float(), weight=label_weight.float(), reduction="sum")
        return loss / _num_positive_targets(target, label_weight) * self.loss_weight


class SmoothL1Loss(nn.Module):
    """Smooth L1 with transition ``beta`` (1/9 as in the paper; 0 gives L1), per positive anchor."""

    def __init__(self, beta: float = 1.0 / 9.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.beta = _check_number("beta", beta, low=0.0)
        self.loss_weight = _check_loss_weight(loss_weight)

    def forward(self, pred: Tensor, target: Tensor, label_weight: Tensor) -> Tensor:
        _check_inputs(self, pred, target, label_weight)
        loss = F.smooth_l1_loss(pred.float(), target.float(), beta=self.beta, reduction="none")
        return (loss * label_weight).sum() / _num_positive_rows(label_weight) * self.loss_weight


class ASL1Loss(nn.Module):
    """Authentic smooth L1, ``sqrt(d^2 + mu^2) - mu`` with ``mu`` > 0, per positive anchor."""

    def __init__(self, mu: float = 0.02, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.mu = _check_number("mu", mu, low=0.0, low_open=True)
        self.loss_weight = _check_loss_weight(loss_weight)

    def forward(self, pred: Tensor, target: Tensor, label_weight: Tensor) -> Tensor:
        _check_inputs(self, pred, target, label_weight)
        loss = authentic_smooth_l1(pred.float() - target.float(), self.mu)
        return (loss * label_weight).sum() / _num_positive_rows(label_weight) * self.loss_weight


CLASSIFICATION_LOSSES: dict[str, type[nn.Module]] = {"ghmc": GHMC, "focal": FocalLoss, "bce": BCELoss}
REGRESSION_LOSSES: dict[str, type[nn.Module]] = {"ghmr": GHMR, "smooth_l1": SmoothL1Loss, "asl1": ASL1Loss}
_REGISTRIES = {"classification": CLASSIFICATION_LOSSES, "regression": REGRESSION_LOSSES}


def build_loss(kind: str, name: str, **settings: object) -> nn.Module:
    """Instantiate the ``kind`` ("classification" or "regression") loss called ``name`` from config.

    Unknown names and unknown settings fail with the allowed values listed.
    """
    if kind not in _REGISTRIES:
        raise ValueError(f"loss kind must be one of {sorted(_REGISTRIES)}, got {kind!r}")
    registry = _REGISTRIES[kind]
    if name not in registry:
        raise ValueError(f"unknown {kind} loss {name!r}; allowed: {', '.join(sorted(registry))}")
    cls = registry[name]
    allowed = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"{kind} loss {name!r} has no setting {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
    return cls(**settings)
