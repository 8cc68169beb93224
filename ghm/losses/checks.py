"""Input checks shared by every loss: numbers in range, equal shapes, finite predictions and targets."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn


def check_number(name: str, value: object, *, low: float, high: float = float("inf"),
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


def check_finite(name: str, tensor: Tensor) -> None:
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


def check_inputs(loss: nn.Module, pred: Tensor, target: Tensor, label_weight: Tensor) -> None:
    """Same shapes, floating predictions, finite predictions and targets."""
    name = type(loss).__name__
    if not (pred.shape == target.shape == label_weight.shape):
        raise ValueError(
            f"{name}: pred, target and label_weight must have the same shape, got "
            f"{tuple(pred.shape)}, {tuple(target.shape)} and {tuple(label_weight.shape)}"
        )
    if not pred.is_floating_point():
        raise ValueError(f"{name}: pred must be a floating-point tensor, got {pred.dtype}")
    check_finite(f"{name}: pred", pred)
    check_finite(f"{name}: target", target)


def check_loss_weight(loss_weight: object) -> float:
    return check_number("loss_weight", loss_weight, low=0.0)
