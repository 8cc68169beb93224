"""CUDA paths (skipped without a GPU; ``benchmarks/gpu.sh`` runs them on a lent one): the losses agree with the CPU,
never synchronise with the host, and an AMP training step of the detector stays finite with float64 GHM state."""

from __future__ import annotations

import pytest
import torch

from ghm.detection.model import build_detector
from ghm.losses import GHMC, GHMR, FocalLoss, SmoothL1Loss

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def inputs(seed: int, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pred = torch.randn(shape, generator=generator, dtype=torch.float64) * 3
    target = (torch.rand(shape, generator=generator) < 0.05).double()
    weight = (torch.rand(shape, generator=generator) < 0.9).double()
    return pred, target, weight


@pytest.mark.parametrize("make", [lambda: GHMC(bins=30, momentum=0.75), lambda: GHMR(mu=0.02, bins=10, momentum=0.7)])
def test_the_losses_agree_with_the_cpu_over_steps(make) -> None:
    cpu, gpu = make(), make().cuda()
    for step in range(3):  # the EMA too
        pred, target, weight = inputs(step, (4096, 10) if isinstance(cpu, GHMC) else (512, 4))
        pred_cpu, pred_gpu = pred.clone().requires_grad_(), pred.cuda().requires_grad_()
        value_cpu, value_gpu = cpu(pred_cpu, target, weight), gpu(pred_gpu, target.cuda(), weight.cuda())
        value_cpu.backward()
        value_gpu.backward()
        torch.testing.assert_close(value_gpu.cpu(), value_cpu)
        torch.testing.assert_close(pred_gpu.grad.cpu(), pred_cpu.grad)
    torch.testing.assert_close(gpu.density.acc_sum.cpu(), cpu.density.acc_sum)


@pytest.mark.parametrize("make", [lambda: GHMC(bins=30, momentum=0.75), lambda: GHMR(momentum=0.7), lambda: GHMC(density="exact")])
def test_forward_and_backward_never_synchronise_with_the_host(make) -> None:
    loss = make().cuda()
    pred, target, weight = (t.cuda().float() for t in inputs(0, (100_000, 4)))
    pred.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss(pred, target, weight).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("pair", ["focal", "ghm"])
def test_an_amp_training_step_stays_finite(pair: str) -> None:
    torch.manual_seed(0)
    cls, reg = (FocalLoss(), SmoothL1Loss()) if pair == "focal" else (GHMC(30, 0.75), GHMR(0.02, 10, 0.7, 10.0))
    model = build_detector(10, cls, reg, min_size=128, max_size=128, images_per_step=4).cuda().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")
    images = [torch.rand(3, 128, 128, device="cuda") for _ in range(4)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0]], device="cuda"), "labels": torch.tensor([3], device="cuda")}] * 4
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.float16):
            losses = model(images, targets)
        loss = losses["classification"] + losses["bbox_regression"]
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        assert torch.isfinite(loss)
    if pair == "ghm":
        assert model.cls_loss.density.acc_sum.dtype == torch.float64 and model.cls_loss.density.acc_sum.sum() > 0
