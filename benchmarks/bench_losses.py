"""Forward+backward time of GHM-C / GHM-R beside the baselines and a per-region loop, measured side by side.

Classification: ``anchors x classes`` logits (RetinaNet-like: mostly easy negatives, ~0.1%
positives) for torchvision's ``sigmoid_focal_loss``, our ``GHMC`` (unit regions, EMA 0.75),
``GHMC(density="exact")`` and the per-region loop of the official semantics. Regression:
``anchors x 4`` deltas for ``smooth_l1_loss``, ``GHMR`` and its loop. Each case is timed as the
median of ``--repeats`` runs after a warm-up, on the CPU and on CUDA when present; on CUDA the
vectorised losses also run under ``torch.cuda.set_sync_debug_mode("error")`` to prove that they
never synchronise with the host.

    python benchmarks/bench_losses.py [--anchors 100000] [--classes 80] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from ghm.losses import GHMC, GHMR
from ghm.losses.reference import LoopGHMC, LoopGHMR

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward_backward(loss: LossFn, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                          repeats: int) -> float:
    """Median seconds of one forward + backward."""
    times = []
    for _ in range(repeats + 1):
        pred.grad = None
        synchronize(pred.device)
        start = time.perf_counter()
        loss(pred, target, weight).backward()
        synchronize(pred.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def classification_inputs(anchors: int, classes: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(anchors, classes, generator=gen) * 2.0 - 5.0
    targets = (torch.rand(anchors, classes, generator=gen) < 1e-3).float()
    weights = (torch.rand(anchors, 1, generator=gen) < 0.95).float().expand(anchors, classes).contiguous()
    return logits.to(device).requires_grad_(), targets.to(device), weights.to(device)


def regression_inputs(anchors: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    deltas = torch.randn(anchors, 4, generator=gen) * 0.3
    targets = torch.randn(anchors, 4, generator=gen) * 0.3
    weights = torch.ones(anchors, 4)
    return deltas.to(device).requires_grad_(), targets.to(device), weights.to(device)


def check_no_host_sync(device: torch.device, cls: tuple[torch.Tensor, ...], reg: tuple[torch.Tensor, ...]) -> str:
    """Run the vectorised losses with CUDA's sync debug mode set to raise on any synchronisation."""
    ghmc, ghmr = GHMC(30, 0.75).to(device), GHMR(0.02, 10, 0.7, 10.0).to(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        ghmc(*cls).backward()
        ghmr(*reg).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "GHMC and GHMR forward+backward ran with set_sync_debug_mode('error'): no host synchronisation"


def bench(device: torch.device, anchors: int, classes: int, repeats: int) -> None:
    cls = classification_inputs(anchors, classes, device)
    reg = regression_inputs(anchors, device)
    cases: list[tuple[str, LossFn, tuple[torch.Tensor, ...], int]] = [
        ("torchvision sigmoid_focal_loss", lambda x, t, w: sigmoid_focal_loss(x, t, reduction="sum"), cls, repeats),
        ("GHMC unit regions (ours)", GHMC(30, 0.75).to(device), cls, repeats),
        ("GHMC exact density (ours)", GHMC(30, density="exact").to(device), cls, repeats),
        ("GHMC per-region loop", LoopGHMC(30, 0.75), cls, max(1, repeats // 2)),
        ("smooth_l1_loss", lambda x, t, w: F.smooth_l1_loss(x, t, beta=1 / 9, reduction="sum"), reg, repeats),
        ("GHMR (ours)", GHMR(0.02, 10, 0.7, 10.0).to(device), reg, repeats),
        ("GHMR per-region loop", LoopGHMR(0.02, 10, 0.7, 10.0), reg, max(1, repeats // 2)),
    ]
    print(f"\n== {device.type}: {anchors} anchors x {classes} classes fp32 (regression: {anchors} x 4), "
          f"{torch.get_num_threads()} threads, median of {repeats} ==")
    seconds = {}
    for name, loss, inputs, n in cases:
        seconds[name] = time_forward_backward(loss, *inputs, repeats=n)
        print(f"{name:34s} {seconds[name] * 1e3:10.2f} ms")
    ratios = [
        ("GHMC / focal", seconds["GHMC unit regions (ours)"] / seconds["torchvision sigmoid_focal_loss"]),
        ("loop / GHMC (speed-up)", seconds["GHMC per-region loop"] / seconds["GHMC unit regions (ours)"]),
        ("GHMC exact / unit", seconds["GHMC exact density (ours)"] / seconds["GHMC unit regions (ours)"]),
        ("GHMR / smooth L1", seconds["GHMR (ours)"] / seconds["smooth_l1_loss"]),
        ("loop / GHMR (speed-up)", seconds["GHMR per-region loop"] / seconds["GHMR (ours)"]),
    ]
    for name, ratio in ratios:
        print(f"{name:34s} {ratio:10.2f}x")
    if device.type == "cuda":
        print(check_no_host_sync(device, cls, reg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}")
    for device in devices:
        bench(device, args.anchors, args.classes, args.repeats)


if __name__ == "__main__":
    main()
