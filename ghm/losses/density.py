"""Gradient density of GHM: how crowded each example's gradient norm g is.

Two estimators share one interface, ``density(g, valid, tot) -> (weights, tot)``:

* :class:`UnitRegionDensity` -- the paper's fast approximation and the official implementation's
  semantics: ``bins`` equal unit regions of [0, 1], an optional EMA of their counts, and division
  by the number of non-empty regions.
* :class:`ExactDensity` -- the paper's GD(g) with a sliding window of width epsilon = 1/bins,
  normalised by the valid window length, computed in O(N log N) by sorting.

Both run without host synchronisation (no ``.item()``, no data-dependent Python branches), keep
their state in float64 whatever the input dtype, and, when ``torch.distributed`` is initialised,
sum the counts and ``tot`` over all ranks so every rank weights by the global density.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

# Every window [g - eps/2, g + eps/2) with g in [0, 1] and eps <= 1 lies below 1.5: elements
# parked at this key are never counted.
_INVALID_KEY = 2.0
EMA_STARTS = ("zero", "first")  # where a region's moving average of counts starts: official (0), or its first count
_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.float64: torch.int64}


def classification_gradient_norm(logits: Tensor, targets: Tensor) -> Tensor:
    """g = |sigmoid(x) - t|, the norm of d BCE / dx; detached float32 so fp16 keeps g = 1."""
    return (logits.detach().float().sigmoid() - targets.detach().float()).abs()


def regression_gradient_norm(diff: Tensor, mu: float) -> Tensor:
    """g = |d| / sqrt(d^2 + mu^2), the norm of d ASL1 / dd; detached float32, in [0, 1)."""
    d = diff.detach().float()
    return d.abs() / torch.sqrt(d * d + mu * mu)


def check_bins(bins: object) -> int:
    """Return ``bins`` if it is an integer >= 1, else raise a ValueError saying so."""
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    return int(bins)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def region_weights(counts: Tensor, density: Tensor, tot: Tensor) -> Tensor:
    """Weight of each unit region: ``tot / (density * #non-empty regions)`` where counts > 0, else 0.

    ``density`` is the region count itself, or its EMA when momentum is used.
    """
    nonempty = counts > 0
    return torch.where(nonempty, tot / (density * nonempty.sum().clamp_min(1)), 0.0)


@dataclass(frozen=True)
class DensityStats:
    """What the last forward saw, kept so the figures and logs need not recompute it.

    ``g`` and ``weights`` are per element (detached); ``counts`` is the histogram of valid g over
    the unit regions of this call (global over ranks when reduced); ``tot`` the normaliser.
    """

    g: Tensor
    valid: Tensor
    weights: Tensor
    counts: Tensor
    tot: Tensor


class _Density(nn.Module):
    """Shared plumbing: unit-region edges, the cross-rank reduction and the last call's stats."""

    def __init__(self, bins: int, dist_reduce: bool) -> None:
        super().__init__()
        self.bins = check_bins(bins)
        self.dist_reduce = bool(dist_reduce)
        self.stats: DensityStats | None = None

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> _Density:
        # ``.half()`` / ``.to(dtype)`` must not turn the EMA of counts (often > 65504) into fp16:
        # buffers follow device changes only.
        kept = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, old in kept.items():
            if old is not None:
                self._buffers[name] = old.to(device=self._buffers[name].device)
        return self

    def reduces(self) -> bool:
        """Whether this call sums its statistics over the ranks of ``torch.distributed``."""
        return self.dist_reduce and _distributed()

    def world_scale(self) -> int:
        """Factor making the ranks' mean loss (what DDP's gradient averaging sees) the global loss."""
        return dist.get_world_size() if self.reduces() else 1

    def region_counts(self, g: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Unit-region index of every element (``bins`` for invalid ones) and the float64 counts.

        Region i is [i / bins, (i + 1) / bins), found as floor(g * bins) in float32; g = 1 (and
        GHM-R's g that rounds to 1) falls in the last region, as the official edges make it.
        """
        index = (g * self.bins).int().clamp_max_(self.bins - 1)
        index = torch.where(valid, index, self.bins).reshape(-1)
        ones = torch.ones((), dtype=torch.float64, device=g.device).expand(index.numel())
        counts = torch.zeros(self.bins + 1, dtype=torch.float64, device=g.device)
        counts.index_add_(0, index, ones)
        return index, counts[: self.bins]

    def all_reduce(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """Sum float64 tensors over the ranks in one collective (a no-op when not reducing)."""
        if not self.reduces():
            return tensors
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        return tuple(part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True))


class UnitRegionDensity(_Density):
    """Unit-region density with the official semantics (see ``ghm-facts.md``).

    Per non-empty region i with k_i valid elements the weight is ``tot / k_i`` (``tot / acc_i``
    with momentum, ``acc_i = m * acc_i + (1 - m) * k_i`` updated only where k_i > 0), then divided
    by the number of non-empty regions.

    ``ema_start`` says where a region's average starts: ``"zero"`` is the official behaviour (so
    the first weights of a region are 1 / (1 - m) times the plain ones, and a region seen rarely
    keeps an average far below its counts); ``"first"`` starts it at the region's first count.
    """

    def __init__(self, bins: int = 30, momentum: float = 0.0, dist_reduce: bool = True, ema_start: str = "zero") -> None:
        super().__init__(bins, dist_reduce)
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be a number with 0 <= momentum < 1, got {momentum!r}")
        if ema_start not in EMA_STARTS:
            raise ValueError(f"ema_start must be one of {', '.join(EMA_STARTS)}, got {ema_start!r}")
        self.momentum = float(momentum)
        self.ema_start = ema_start
        self.register_buffer("acc_sum", torch.zeros(self.bins, dtype=torch.float64))

    def forward(self, g: Tensor, valid: Tensor, tot: Tensor) -> tuple[Tensor, Tensor]:
        """Per-element weights (dtype of ``g``) and the (global) ``tot`` for ``g`` in [0, 1]."""
        index, counts = self.region_counts(g, valid)
        counts, tot = self.all_reduce(counts, tot)
        if self.momentum > 0:
            nonempty = counts > 0
            average = self.momentum * self.acc_sum + (1 - self.momentum) * counts
            if self.ema_start == "first":  # a region never updated (average 0) starts at its count
                average = torch.where(self.acc_sum > 0, average, counts)
            self.acc_sum.copy_(torch.where(nonempty, average, self.acc_sum))
            density = self.acc_sum
        else:
            density = counts
        tot = tot.clamp_min(1.0)
        region_weight = region_weights(counts, density, tot)
        lookup = torch.cat([region_weight, region_weight.new_zeros(1)]).to(g.dtype)
        weights = lookup.index_select(0, index).view_as(g)
        self.stats = DensityStats(g=g, valid=valid, weights=weights, counts=counts, tot=tot)
        return weights, tot


class ExactDensity(_Density):
    """The paper's exact gradient density, literally as in the seed notes.

    ``GD(g) = #{k : g - eps/2 <= g_k < g + eps/2} / l_eps(g)`` with
    ``l_eps(g) = min(g + eps/2, 1) - max(g - eps/2, 0)`` and ``eps = 1 / bins``; the weight of a
    valid element is ``tot / GD(g)`` (``beta = N / GD``). One sort and two searches of the sorted
    values: O(N log N) instead of the O(N^2) pairwise comparison. Has no EMA.
    """

    def forward(self, g: Tensor, valid: Tensor, tot: Tensor) -> tuple[Tensor, Tensor]:
        """Per-element weights (dtype of ``g``) and ``tot`` for float32 or float64 ``g`` in [0, 1]."""
        if self.reduces():
            raise NotImplementedError(
                "density='exact' needs every rank's g to sort and is not reduced across ranks; "
                "use density='unit' or dist_reduce=False under torch.distributed"
            )
        half = 0.5 / self.bins
        key = torch.where(valid, g, _INVALID_KEY).reshape(-1)
        # Non-negative floats order like their bit patterns read as integers, and integer keys take
        # PyTorch's radix sort on the CPU (about 4x faster than the float sort).
        sorted_bits, order = torch.sort(key.view(_SAME_WIDTH_INT[key.dtype]))
        s = sorted_bits.view(key.dtype)
        lo, hi = s - half, s + half
        count = torch.searchsorted(s, hi) - torch.searchsorted(s, lo)
        length = hi.clamp(max=1.0) - lo.clamp(min=0.0)
        tot = tot.clamp_min(1.0)
        sorted_weights = (tot * length / count).to(g.dtype)
        weights = torch.empty_like(sorted_weights).scatter_(0, order, sorted_weights).view_as(g)
        weights = torch.where(valid, weights, 0.0)
        _, counts = self.region_counts(g, valid)
        self.stats = DensityStats(g=g, valid=valid, weights=weights, counts=counts, tot=tot)
        return weights, tot
