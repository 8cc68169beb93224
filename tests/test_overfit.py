"""The detection pipeline's overfit check: trained and evaluated on the same handful of images, every loss pair detects.

Matcher, box coding, losses, post-processing and the COCO evaluation must all agree for a model
to reproduce its own training images; a pipeline that cannot is broken whatever the loss.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor

import pytest
import torch
from torch.utils.data import DataLoader

from ghm.data.coco import collate
from ghm.detection.evaluation import evaluate
from ghm.detection.schedule import lr_factor, set_lr_factor
from ghm.detection.training import train_step
from tests.conftest import build_test_job

# Steps per pair: focal loss's classification fits two images in about a hundred steps, GHM's losses need several times
# that (docs/benchmarks.md, "the overfit check"); GHM_OVERFIT_STEPS sets one count for every pair.
STEPS = {"focal": 300, "ce_sl1": 300, "fl_asl1": 300, "ghm": 600, "ghmc_sl1": 600, "ghmc_asl1": 600, "fl_ghmr": 600}
if "GHM_OVERFIT_STEPS" in os.environ:
    STEPS = dict.fromkeys(STEPS, int(os.environ["GHM_OVERFIT_STEPS"]))
LOSS_PAIRS = list(STEPS)
# Two 96 px Digits-Det images (about nine digits), a narrow tiny RetinaNet from scratch, the benchmark's learning rate per
# image with a step down after two thirds of the steps.
SETTINGS = ["data.train_images=2", "data.val_images=1", "data.image_size=96", "data.max_digit_size=40", "pretrain=none",
            "model.width=16", "model.fpn_channels=32", "model.min_size=96", "model.max_size=96", "train.batch_size=2",
            "train.lr=0.0025", "train.lr_reference_batch=1", "train.warmup_iters=20", "train.schedule=step", "train.figures=false"]


def overfit(loss: str, tracking_uri: str) -> dict[str, float]:
    """Train one loss pair on the two images (one thread) and return its COCO metrics on the same images."""
    torch.set_num_threads(1)
    steps = STEPS[loss]  # one epoch is the one batch of the two images
    job = build_test_job([f"loss={loss}", *SETTINGS, f"train.epochs={steps}", f"train.lr_steps=[{steps * 2 // 3}]",
                          f"mlflow.tracking_uri={tracking_uri}"])
    images, targets = collate([job.data.train[i] for i in range(len(job.data.train))])
    job.model.train()
    for step in range(steps):
        set_lr_factor(job.optimizer, lr_factor(job.config.train, step, 1))
        if train_step(job, images, targets, f"step {step}") is None:
            raise AssertionError(f"{loss}: non-finite loss at step {step}")
    loader = DataLoader(job.data.train, batch_size=2, collate_fn=collate)
    return evaluate(job.model, loader, job.data.train, job.device).metrics


@pytest.fixture(scope="module")
def overfitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future[dict[str, float]]]:
    """Every pair trained once, one single-threaded process per core (the pairs are independent); a pair's failure stays
    its own test's."""
    stores = tmp_path_factory.mktemp("overfit")
    workers = min(len(LOSS_PAIRS), os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        slowest_first = sorted(LOSS_PAIRS, key=STEPS.__getitem__, reverse=True)  # the two processes end together
        return {loss: pool.submit(overfit, loss, f"sqlite:///{stores / f'{loss}.db'}") for loss in slowest_first}


@pytest.mark.slow
@pytest.mark.parametrize("loss", LOSS_PAIRS)
def test_every_loss_pair_reproduces_its_training_images(loss: str, overfitted: dict[str, Future[dict[str, float]]]) -> None:
    metrics = overfitted[loss].result()
    assert metrics["AP50"] >= 0.9, metrics
