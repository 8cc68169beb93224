"""Two gloo processes: the global histogram makes the ranks agree with one process on the whole batch."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ghm.losses import GHMC, GHMR

WORLD = 2
STEPS = 3


def batches(step: int) -> tuple[torch.Tensor, ...]:
    """The whole batch of one step; rank r takes rows r::WORLD (unequal valid counts per rank)."""
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(400, 6, generator=gen) * 3 - 2
    t = (torch.rand(400, 6, generator=gen) < 0.05).float()
    w = (torch.rand(400, 6, generator=gen) < 0.9).float()
    d = torch.randn(90, 4, generator=gen) * 0.2
    dt = torch.randn(90, 4, generator=gen) * 0.2
    dw = (torch.rand(90, 1, generator=gen) < 0.5).float().expand(90, 4).contiguous()
    return x, t, w, d, dt, dw


def run_losses(ghmc: GHMC, ghmr: GHMR, rows: slice) -> list[dict[str, torch.Tensor]]:
    out = []
    for step in range(STEPS):
        x, t, w, d, dt, dw = batches(step)
        x = x[rows].clone().requires_grad_()
        d = d[rows].clone().requires_grad_()
        cls, reg = ghmc(x, t[rows], w[rows]), ghmr(d, dt[rows], dw[rows])
        (cls + reg).backward()
        out.append({"cls": cls.detach(), "reg": reg.detach(), "x_grad": x.grad, "d_grad": d.grad,
                    "acc_cls": ghmc.density.acc_sum.clone(), "acc_reg": ghmr.density.acc_sum.clone()})
    return out


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = run_losses(GHMC(bins=30, momentum=0.75), GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0),
                             slice(rank, None, WORLD))
        exact_refused = False
        try:
            GHMC(density="exact")(torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2, 2))
        except NotImplementedError:
            exact_refused = True
        torch.save({"steps": results, "exact_refused": exact_refused}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_agree_with_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single = run_losses(GHMC(bins=30, momentum=0.75), GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0),
                        slice(None))
    assert all(r["exact_refused"] for r in ranks)
    for step in range(STEPS):
        whole = single[step]
        parts = [r["steps"][step] for r in ranks]
        for key in ("cls", "reg"):
            # DDP averages over ranks: the mean of the ranks' losses is the one-process loss.
            torch.testing.assert_close(sum(p[key] for p in parts) / WORLD, whole[key], rtol=1e-5, atol=1e-7)
        for key, grad in (("x_grad", "x_grad"), ("d_grad", "d_grad")):
            stitched = torch.empty_like(whole[grad])
            for rank, part in enumerate(parts):
                stitched[rank::WORLD] = part[key] / WORLD  # what DDP's averaging makes of each rank's share
            torch.testing.assert_close(stitched, whole[grad], rtol=1e-5, atol=1e-9)
        for key in ("acc_cls", "acc_reg"):
            for part in parts:
                torch.testing.assert_close(part[key], whole[key], rtol=1e-12, atol=0)
