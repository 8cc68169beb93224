"""Two gloo processes: the global histogram makes the ranks agree with one process on the whole batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ghm.losses import GHMC, GHMR

WORLD = 2
STEPS = 3

pytestmark = pytest.mark.slow


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


def same_picture_dataset(root: Path, images: int = 16) -> None:
    """A COCO-format dataset of one picture annotated differently in each entry.

    Every batch's BatchNorm statistics are then the same in one process as on each rank, so two
    ranks must train exactly as one process does, while their boxes (and so GHM's density) differ.
    """
    from PIL import Image

    (root / "images").mkdir(parents=True)
    picture = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0)) * 255
    Image.fromarray(picture.byte().numpy()).save(root / "images" / "a.png")
    gen = torch.Generator().manual_seed(1)
    annotations = []
    for image in range(1, images + 1):
        for _ in range(int(torch.randint(1, 4, (), generator=gen))):
            x, y = (torch.rand(2, generator=gen) * 40).tolist()
            w, h = (8 + torch.rand(2, generator=gen) * 16).tolist()
            annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": int(torch.randint(1, 4, (), generator=gen)),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    document = {"images": [{"id": i, "file_name": "a.png", "width": 64, "height": 64} for i in range(1, images + 1)],
                "annotations": annotations, "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]}
    (root / "annotations.json").write_text(json.dumps(document))


def trainer_overrides(root: Path, out: Path) -> list[str]:
    # whole_batch: the density over the whole batch, shared by the ranks (the official per-group scope gives each rank its own)
    return ["loss=ghm", "model.ghm_scope=whole_batch", "data=coco", "pretrain=none", f"data.root={root}", "data.train_images=images",
            "data.val_images=images",
            "data.train_annotations=annotations.json", "data.val_annotations=annotations.json", "data.hflip=false",
            "model.min_size=64", "model.max_size=64", "train=smoke", "train.batch_size=8", "train.max_iters_per_epoch=2",
            "train.epochs=1", "train.figures=false", "train.warmup_iters=0", f"checkpoint_dir={out}",
            f"mlflow.tracking_uri=sqlite:///{out / 'mlflow.db'}", "mlflow.experiment_name=ddp"]


def trainer_worker(rank: int, init_file: str, root: str, out_dir: str) -> None:
    from ghm.detection.training import train
    from ghm.run import Processes
    from tests.conftest import build_test_job

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        job = build_test_job(trainer_overrides(Path(root), Path(out_dir)), Processes(world_size=WORLD, rank=rank, local_rank=rank))
        result = train(job)
        torch.save({"model": job.model.state_dict(), "metrics": result.metrics}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_train_as_one_process_holding_the_whole_batch(tmp_path: Path) -> None:
    from ghm.detection.training import train
    from tests.conftest import build_test_job

    same_picture_dataset(tmp_path / "data")
    single = build_test_job(trainer_overrides(tmp_path / "data", tmp_path / "single"))
    single_result = train(single)
    mp.spawn(trainer_worker, args=(str(tmp_path / "init"), str(tmp_path / "data"), str(tmp_path / "ddp")), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in range(WORLD)]
    expected = single.model.state_dict()
    for rank in ranks:
        assert rank["metrics"] == pytest.approx(single_result.metrics, abs=1e-3)  # rank 0 evaluated, every rank returns it
        for key, value in expected.items():
            if key.endswith("running_var"):  # BatchNorm's unbiased variance: n / (n - 1) of each rank's own batch
                torch.testing.assert_close(rank["model"][key], value, rtol=2e-2, atol=1e-6, msg=key)
            else:  # weights, running means, GHM's EMA of the region counts
                torch.testing.assert_close(rank["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    assert any((ranks[0]["model"][k] != v).any() for k, v in build_test_job(trainer_overrides(tmp_path / "data", tmp_path / "init0"))
               .model.state_dict().items() if v.is_floating_point())  # training moved the weights
