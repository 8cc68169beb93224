"""GHM-C / GHM-R and the baselines against independent expectations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from ghm.losses import (
    GHMC,
    GHMR,
    ASL1Loss,
    BCELoss,
    FocalLoss,
    SmoothL1Loss,
)
from ghm.losses.ghm import _weighted_bce_sum
from ghm.losses.reference import LoopGHMC, LoopGHMR


def logits_for(g: torch.Tensor) -> torch.Tensor:
    """Logits whose negatives (target 0) have gradient norm g = sigmoid(x)."""
    return torch.log(g) - torch.log1p(-g)


def classification_batch(seed: int, n: int = 3000, c: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=gen) * 3 - 1
    t = (torch.rand(n, c, generator=gen) < 0.05).float()
    w = (torch.rand(n, c, generator=gen) < 0.9).float()
    return x, t, w


@pytest.mark.parametrize("momentum", [0.0, 0.75])
def test_ghmc_matches_per_region_loop_of_official_semantics(momentum: float) -> None:
    ours, loop = GHMC(bins=30, momentum=momentum, loss_weight=2.0), LoopGHMC(bins=30, momentum=momentum, loss_weight=2.0)
    for step in range(3):
        x, t, w = classification_batch(step)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        a, b = ours(x1, t, w), loop(x2, t, w)
        a.backward()
        b.backward()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-10)
    if momentum:
        torch.testing.assert_close(ours.density.acc_sum, torch.tensor(loop.acc_sum, dtype=torch.float64))


@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_ghmr_matches_per_region_loop_of_official_semantics(momentum: float) -> None:
    ours, loop = GHMR(mu=0.02, bins=10, momentum=momentum, loss_weight=10.0), LoopGHMR(0.02, 10, momentum, 10.0)
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        pred = torch.randn(500, 4, generator=gen) * 0.1
        target = torch.randn(500, 4, generator=gen) * 0.1
        weight = (torch.rand(500, 1, generator=gen) < 0.3).float().expand(500, 4) * 0.5
        p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
        a, b = ours(p1, target, weight), loop(p2, target, weight)
        a.backward()
        b.backward()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-10)


def test_all_in_one_region_gives_plain_mean_bce() -> None:
    gen = torch.Generator().manual_seed(0)
    g = 0.40 + 0.02 * torch.rand(200, 5, generator=gen)  # region 12 of 30
    x, t = logits_for(g), torch.zeros(200, 5)
    w = (torch.rand(200, 5, generator=gen) < 0.8).float()
    loss = GHMC(bins=30)(x, t, w)
    expected = F.binary_cross_entropy_with_logits(x, t, reduction="none")[w > 0].mean()
    torch.testing.assert_close(loss, expected)


def test_all_in_one_region_gives_plain_mean_asl1() -> None:
    gen = torch.Generator().manual_seed(1)
    d = 0.05 + 0.01 * torch.rand(300, 4, generator=gen)  # g = d / sqrt(d^2 + mu^2) in [0.928, 0.949]
    w = torch.ones(300, 4)
    loss = GHMR(mu=0.02, bins=10)(d, torch.zeros_like(d), w)
    expected = (torch.sqrt(d**2 + 0.02**2) - 0.02).mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("density", ["unit", "exact"])
def test_uniformly_spread_g_gives_weights_of_one(density: str) -> None:
    n = 3000  # a multiple of bins: every unit region holds n / bins elements
    g = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    loss = GHMC(bins=30, density=density)
    loss(logits_for(g)[:, None], torch.zeros(n, 1, dtype=torch.float64), torch.ones(n, 1, dtype=torch.float64))
    weights = loss.stats.weights
    assert weights.min() > 0.98 and weights.max() < 1.02, (weights.min(), weights.max())


def brute_force_exact_weights(g: torch.Tensor, valid: torch.Tensor, bins: int) -> torch.Tensor:
    """The paper's GD(g) by pairwise comparison: O(N^2), literally from the formula."""
    eps = 1.0 / bins
    gv = g[valid]
    weights = torch.zeros_like(g)
    for i in range(g.numel()):
        if not valid[i]:
            continue
        inside = (gv >= g[i] - eps / 2) & (gv < g[i] + eps / 2)
        length = min(g[i] + eps / 2, 1.0) - max(g[i] - eps / 2, 0.0)
        weights[i] = gv.numel() / (inside.sum() / length)
    return weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_density_agrees_with_brute_force(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    # A skewed distribution with ties and the ends 0 and 1, like a detector's.
    g = torch.cat([torch.rand(300, generator=gen) ** 4, torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5, 0.5])]).to(dtype)
    t = (torch.rand(g.numel(), generator=gen) < 0.3).to(dtype)
    x = logits_for(torch.where(t > 0, 1 - g, g).clamp(1e-7, 1 - 1e-7).double()).to(dtype)
    valid = torch.rand(g.numel(), generator=gen) < 0.85
    loss = GHMC(bins=10, density="exact")
    value = loss(x[:, None], t[:, None], valid[:, None].to(dtype))
    g_seen = loss.stats.g[:, 0]
    expected = brute_force_exact_weights(g_seen, valid, bins=10)
    torch.testing.assert_close(loss.stats.weights[:, 0], expected, rtol=1e-5, atol=0)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    torch.testing.assert_close(value, ((expected * bce).sum() / valid.sum()).to(value.dtype), rtol=1e-5, atol=0)


def test_momentum_sequence_worked_by_hand() -> None:
    # bins = 2, momentum = 0.5.
    # Call 1: g = [0.1, 0.2, 0.3, 0.9], all valid: counts [3, 1], acc = [1.5, 0.5], tot = 4, n = 2,
    #         weights 4 / (1.5 * 2) = 4/3 in region 0 and 4 / (0.5 * 2) = 4 in region 1.
    # Call 2: g = [0.8, 0.7, 0.6 (invalid)]: counts [0, 2], acc = [1.5, 0.5 * 0.5 + 0.5 * 2 = 1.25],
    #         tot = 2, n = 1, weight 2 / 1.25 = 1.6 for the valid ones, 0 for the invalid one.
    loss = GHMC(bins=2, momentum=0.5)
    g1 = torch.tensor([0.1, 0.2, 0.3, 0.9], dtype=torch.float64)
    x1, t1 = logits_for(g1)[:, None], torch.zeros(4, 1, dtype=torch.float64)
    value1 = loss(x1, t1, torch.ones(4, 1, dtype=torch.float64))
    torch.testing.assert_close(loss.density.acc_sum, torch.tensor([1.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(loss.stats.weights[:, 0], torch.tensor([4 / 3, 4 / 3, 4 / 3, 4.0], dtype=torch.float64))
    bce1 = -torch.log1p(-g1)
    torch.testing.assert_close(value1, (torch.tensor([4 / 3, 4 / 3, 4 / 3, 4.0], dtype=torch.float64) * bce1).sum() / 4)

    g2 = torch.tensor([0.8, 0.7, 0.6], dtype=torch.float64)
    w2 = torch.tensor([[1.0], [1.0], [0.0]], dtype=torch.float64)
    value2 = loss(logits_for(g2)[:, None], torch.zeros(3, 1, dtype=torch.float64), w2)
    torch.testing.assert_close(loss.density.acc_sum, torch.tensor([1.5, 1.25], dtype=torch.float64))
    torch.testing.assert_close(loss.stats.weights[:, 0], torch.tensor([1.6, 1.6, 0.0], dtype=torch.float64))
    torch.testing.assert_close(value2, 1.6 * (-torch.log1p(-g2[:2])).sum() / 2)


def test_ema_started_at_the_first_count_worked_by_hand() -> None:
    # bins = 2, momentum = 0.5, ema_start = "first".
    # Call 1: g = [0.1, 0.2, 0.3, 0.9]: counts [3, 1], acc = [3, 1] (each region's first count), so the weights are
    #         the plain ones: 4 / (3 * 2) = 2/3 and 4 / (1 * 2) = 2 (the official EMA starts at 0: 4/3 and 4).
    # Call 2: g = [0.8, 0.7]: counts [0, 2], acc = [3, 0.5 * 1 + 0.5 * 2 = 1.5], tot = 2, n = 1, weight 2 / 1.5.
    loss = GHMC(bins=2, momentum=0.5, ema_start="first")
    g1 = torch.tensor([0.1, 0.2, 0.3, 0.9], dtype=torch.float64)
    loss(logits_for(g1)[:, None], torch.zeros(4, 1, dtype=torch.float64), torch.ones(4, 1, dtype=torch.float64))
    torch.testing.assert_close(loss.density.acc_sum, torch.tensor([3.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(loss.stats.weights[:, 0], torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0], dtype=torch.float64))
    g2 = torch.tensor([0.8, 0.7], dtype=torch.float64)
    loss(logits_for(g2)[:, None], torch.zeros(2, 1, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64))
    torch.testing.assert_close(loss.density.acc_sum, torch.tensor([3.0, 1.5], dtype=torch.float64))
    torch.testing.assert_close(loss.stats.weights[:, 0], torch.tensor([2 / 1.5, 2 / 1.5], dtype=torch.float64))


def test_g_equal_to_one_lands_in_last_region() -> None:
    loss = GHMC(bins=5)
    # t = 1 with a logit of -40: sigmoid is 4e-18, so g = 1 exactly in float32.
    loss(torch.tensor([[-40.0], [-3.0]]), torch.tensor([[1.0], [0.0]]), torch.ones(2, 1))
    assert loss.stats.g[0, 0] == 1.0
    torch.testing.assert_close(loss.stats.counts, torch.tensor([1.0, 0, 0, 0, 1.0], dtype=torch.float64))


def test_nothing_valid_gives_zero_loss_and_zero_gradient() -> None:
    for loss, pred in [(GHMC(momentum=0.5), torch.randn(10, 3)), (GHMR(momentum=0.5), torch.randn(10, 4)),
                       (GHMC(density="exact"), torch.randn(10, 3))]:
        pred.requires_grad_()
        value = loss(pred, torch.zeros_like(pred), torch.zeros_like(pred))
        value.backward()
        assert value.item() == 0.0
        assert torch.equal(pred.grad, torch.zeros_like(pred))
        assert torch.isfinite(value)
    empty = torch.zeros(0, 80, requires_grad=True)
    value = GHMC()(empty, torch.zeros(0, 80), torch.zeros(0, 80))
    value.backward()
    assert value.item() == 0.0


@pytest.mark.parametrize("make", [lambda: GHMC(bins=10), lambda: GHMC(bins=10, density="exact")])
def test_ghmc_gradcheck_float64(make) -> None:
    # GHM's weights are constants of the backward pass, so g must be away from every place where
    # they move with g: region edges (k / 10), other elements' window edges (differences are
    # multiples of 0.88/37, never 0.05) and the clipped windows within 0.05 of 0 and 1.
    g = 0.06 + 0.88 * (torch.arange(37, dtype=torch.float64) + 0.37) / 37
    x = logits_for(g).reshape(-1, 1).requires_grad_()
    t = torch.zeros_like(x)
    w = torch.ones_like(x)
    assert torch.autograd.gradcheck(lambda p: make()(p, t, w), (x,))


def test_ghmr_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(5)
    pred = (torch.randn(20, 4, generator=gen, dtype=torch.float64) * 0.2).requires_grad_()
    target = torch.randn(20, 4, generator=gen, dtype=torch.float64) * 0.2
    w = torch.ones_like(target)
    assert torch.autograd.gradcheck(lambda p: GHMR(mu=0.02, bins=10, loss_weight=3.0)(p, target, w), (pred,))


def test_state_dict_round_trip_keeps_the_ema() -> None:
    first = GHMC(bins=30, momentum=0.75)
    for step in range(2):
        first(*classification_batch(step))
    state = first.state_dict()
    assert set(state) == {"density.acc_sum"} and state["density.acc_sum"].dtype == torch.float64
    second = GHMC(bins=30, momentum=0.75)
    second.load_state_dict(state)
    batch = classification_batch(7)
    torch.testing.assert_close(first(*batch), second(*batch), rtol=0, atol=0)
    torch.testing.assert_close(first.density.acc_sum, second.density.acc_sum, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_keep_float_state(dtype: torch.dtype) -> None:
    loss = GHMC(bins=30, momentum=0.75).to(dtype)  # .half() must not touch the state
    assert loss.density.acc_sum.dtype == torch.float64
    n = 70_000  # more elements in one region than fp16 can count (65504)
    x = torch.full((n, 1), -8.0, dtype=dtype)
    x[:10] = 12.0  # g = 1 in half precision (target 0, sigmoid rounds to 1)
    x.requires_grad_()
    t, w = torch.zeros(n, 1, dtype=dtype), torch.ones(n, 1, dtype=dtype)
    value = loss(x, t, w)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    counts = loss.stats.counts
    assert counts[0] == n - 10 and counts[-1] == 10
    torch.testing.assert_close(loss.density.acc_sum[0], torch.tensor(0.25 * (n - 10), dtype=torch.float64))
    # Same numbers as the float32 computation on the rounded values.
    reference = GHMC(bins=30, momentum=0.75)(x.detach().float(), t.float(), w.float())
    torch.testing.assert_close(value, reference)


def test_autocast_bfloat16_on_cpu() -> None:
    head = torch.nn.Linear(8, 5)
    feats = torch.randn(64, 8)
    t = (torch.rand(64, 5) < 0.1).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(feats)
        value = GHMC(momentum=0.75)(logits, t, torch.ones_like(t))
    assert logits.dtype == torch.bfloat16 and value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: GHMC(bins=0), "bins must be an integer >= 1"),
        (lambda: GHMC(bins=2.5), "bins must be an integer >= 1"),
        (lambda: GHMC(bins=True), "bins must be an integer >= 1"),
        (lambda: GHMR(bins="10"), "bins must be an integer >= 1"),
        (lambda: GHMC(momentum=1.0), "momentum must be a number with 0 <= momentum < 1"),
        (lambda: GHMC(momentum=-0.1), "momentum must be a number with 0 <= momentum < 1"),
        (lambda: GHMR(momentum=1.5), "momentum must be a number with 0 <= momentum < 1"),
        (lambda: GHMR(mu=0.0), r"mu must be a number in \(0.0, inf\]"),
        (lambda: ASL1Loss(mu=-1.0), r"mu must be a number in \(0.0, inf\]"),
        (lambda: GHMC(loss_weight=-1.0), r"loss_weight must be a number in \[0.0, inf\]"),
        (lambda: FocalLoss(gamma=-2.0), r"gamma must be a number in \[0.0, inf\]"),
        (lambda: SmoothL1Loss(beta=-0.1), r"beta must be a number in \[0.0, inf\]"),
        (lambda: GHMC(density="kde"), "density must be one of"),
        (lambda: GHMC(density="exact", momentum=0.75), "momentum applies to density='unit' only"),
        (lambda: GHMR(ema_start="one"), "ema_start must be one of zero, first"),
    ],
)
def test_invalid_settings_are_refused(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("loss", [GHMC(), GHMR(), FocalLoss(), BCELoss(), SmoothL1Loss(), ASL1Loss()])
def test_invalid_inputs_are_refused(loss) -> None:
    ok = torch.zeros(6, 4)
    with pytest.raises(ValueError, match="must have the same shape"):
        loss(torch.zeros(6, 4), torch.zeros(6, 3), torch.ones(6, 4))
    with pytest.raises(ValueError, match="must have the same shape"):
        loss(torch.zeros(6, 4), ok, torch.ones(6))
    with pytest.raises(ValueError, match="pred must be a floating-point tensor"):
        loss(torch.zeros(6, 4, dtype=torch.long), ok, torch.ones(6, 4))
    for bad in (math.nan, math.inf, -math.inf):
        pred = torch.zeros(6, 4)
        pred[2, 1] = bad
        with pytest.raises(ValueError, match=r"pred contains non-finite values \(NaN or inf\): 1 of 24 elements"):
            loss(pred, ok, torch.ones(6, 4))
        target = torch.zeros(6, 4)
        target[0, 0] = bad
        with pytest.raises(ValueError, match="target contains non-finite values"):
            loss(ok, target, torch.ones(6, 4))


def test_target_requiring_grad_is_refused() -> None:
    with pytest.raises(ValueError, match="target must not require grad"):
        GHMR()(torch.zeros(3, 4), torch.zeros(3, 4, requires_grad=True), torch.ones(3, 4))


def test_stats_expose_histogram_and_weights() -> None:
    loss = GHMC(bins=30, momentum=0.75)
    x, t, w = classification_batch(11)
    loss(x, t, w)
    stats = loss.stats
    expected_g = (x.sigmoid() - t).abs()
    torch.testing.assert_close(stats.g, expected_g)
    hist = torch.histc(expected_g[w > 0], bins=30, min=0, max=1).double()
    torch.testing.assert_close(stats.counts, hist)
    assert stats.tot.item() == (w > 0).sum().item()
    assert torch.all(stats.weights[w == 0] == 0)


def test_focal_loss_is_torchvision_normalised_by_positives() -> None:
    x, t, w = classification_batch(2)
    expected = (sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0) * w).sum() / (t * w).sum()
    torch.testing.assert_close(FocalLoss(alpha=0.25, gamma=2.0)(x, t, w), expected)


def test_bce_is_focal_with_gamma_zero_and_no_alpha() -> None:
    x, t, w = classification_batch(4)
    torch.testing.assert_close(BCELoss(loss_weight=3.0)(x, t, w), FocalLoss(alpha=-1, gamma=0.0, loss_weight=3.0)(x, t, w))


def test_regression_baselines_by_hand() -> None:
    d = torch.tensor([[0.05, -0.5, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0], [0.1, 0.2, 0.3, 0.4]])
    w = torch.tensor([[1.0] * 4, [0.0] * 4, [1.0] * 4])  # two positive anchors
    zero = torch.zeros_like(d)
    beta = 0.1
    sl1 = torch.where(d.abs() < beta, 0.5 * d**2 / beta, d.abs() - 0.5 * beta)
    torch.testing.assert_close(SmoothL1Loss(beta=beta)(d, zero, w), (sl1 * w).sum() / 2)
    asl1 = torch.sqrt(d**2 + 0.02**2) - 0.02
    torch.testing.assert_close(ASL1Loss(mu=0.02)(d, zero, w), (asl1 * w).sum() / 2)


@pytest.mark.parametrize("loss", [SmoothL1Loss(), ASL1Loss(), GHMR()])
def test_box_losses_of_a_batch_without_foreground_are_zero(loss: torch.nn.Module) -> None:
    pred = torch.zeros(0, 4, requires_grad=True)
    value = loss(pred, torch.zeros(0, 4), torch.zeros(0, 4))
    value.backward()
    assert value.item() == 0.0 and pred.grad.shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_cpu_bce_value_is_torchs_to_rounding_over_every_logit_range(dtype: torch.dtype) -> None:
    logits = torch.cat([torch.linspace(-120, 120, 4001, dtype=dtype), torch.tensor([0.0, 1e-30, -1e-8, 16.6, 88.5], dtype=dtype)])
    for target in (torch.zeros_like(logits), torch.ones_like(logits), torch.full_like(logits, 0.3)):
        weights = torch.rand(logits.shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
        elementwise = torch.stack([_weighted_bce_sum(x[None], t[None], w[None]) for x, t, w in zip(logits, target, weights, strict=True)])
        x, t, w = logits.double(), target.double(), weights.double()
        exact = (x.clamp(min=0) - x * t + torch.log1p(torch.exp(-x.abs()))) * w  # in float64, log1p itself
        # to a few ulps of the value (torch's own float32 BCE loses the smallest values entirely)
        torch.testing.assert_close(elementwise.double(), exact, rtol=8 * torch.finfo(dtype).eps, atol=1e-6 * float(dtype == torch.float32))
        total = F.binary_cross_entropy_with_logits(logits, target, weight=weights, reduction="sum")
        torch.testing.assert_close(_weighted_bce_sum(logits, target, weights), total, rtol=1e-6, atol=0.0)
