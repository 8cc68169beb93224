"""The training loop of one run: epochs of steps, evaluation, checkpoints and tracking.

Deterministic by design, since paired comparisons need it: the seed fixes the initial weights
(:func:`ghm.run.build_job`), the data order (``DistributedSampler(seed)`` with ``set_epoch``)
and the augmentation, so one config always trains the same way, and a run resumed from its last
epoch checkpoint ends with the same weights as an uninterrupted one. Under ``torchrun`` it trains
with DDP (rank 0 evaluates, checkpoints and tracks). The parts are small functions: the schedule
(:mod:`ghm.detection.schedule`), one step (:func:`train_step`: AMP, the non-finite policy, the
optimizer), the telemetry (:mod:`ghm.detection.telemetry`).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from PIL import Image
from torch import Tensor, nn

from ghm.detection.evaluation import evaluate
from ghm.detection.schedule import lr_factor, set_lr_factor
from ghm.detection.telemetry import EpochMeter, figure_phases, log_figures, observed_loss_inputs
from ghm.losses import NonFiniteInputError
from ghm.run import Job
from ghm.tracking.datasets import dataset_splits
from ghm.tracking.model import detector_spec, log_detector, logged_model_bytes
from ghm.tracking.version import source_tags

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]  # (epoch, that epoch's metrics), after its checkpoint


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf (``train.nonfinite=fail``)."""


@dataclass
class RunResult:
    """What a finished run reports: final metrics (``mAP`` is the sweeps' objective) and its MLflow run."""

    metrics: dict[str, float]
    run_id: str | None
    checkpoint: Path


def train(job: Job, on_epoch: EpochCallback | None = None) -> RunResult:
    """Train (resuming from the run's own last checkpoint), evaluate and track: the whole job."""
    with _sigterm_as_interrupt(), job.checkpoint.held() if job.rank == 0 else nullcontext():
        state = _resume(job)
        settings = job.config.mlflow
        tracking = job.tracker.start(run_id=state.get("run_id"), run_name=settings.run_name, tags=job.tags, config=job.config.raw,
                                     datasets=dataset_splits(job.data),
                                     system_metrics=settings.system_metrics_interval if settings.system_metrics else None) \
            if job.tracker else nullcontext(None)
        with tracking as run_id:
            if job.tracker and job.model.backbone_weights and not state:  # the tensors the backbone checkpoint gave
                job.tracker.log_dict(dataclasses.asdict(job.model.backbone_weights), "backbone_weights.json")
            if job.tracker and state.get("epoch_metrics"):  # killed between its checkpoint and its metrics
                job.tracker.log_missing_metrics(state["epoch_metrics"], step=state["epoch"])
            metrics = _train_epochs(job, state, run_id, on_epoch)
            if job.tracker and settings.log_model and not job.tracker.logged_models():  # once, even when resumed after the end
                _log_model(job)
    if job.world_size > 1:  # rank 0 evaluated and tracked: every rank returns its result
        shared = [metrics, run_id]
        dist.broadcast_object_list(shared, src=0)
        metrics, run_id = shared
    return RunResult(metrics=metrics, run_id=run_id, checkpoint=job.checkpoint.path)


def _resume(job: Job) -> dict[str, Any]:
    state = job.checkpoint.load() if job.config.train.resume else None
    if state is None:
        return {}
    job.model.load_state_dict(state["model"])
    job.optimizer.load_state_dict(state["optimizer"])
    job.scaler.load_state_dict(state["scaler"])
    log.info("resuming from %s after epoch %d", job.checkpoint.path, state["epoch"])
    return state


def _train_epochs(job: Job, state: dict[str, Any], run_id: str | None, on_epoch: EpochCallback | None) -> dict[str, float]:
    cfg = job.config.train
    if cfg.ghm_state_warmup and not state:
        warm_ghm_state(job, cfg.ghm_state_warmup)
    skipped = state.get("skipped", 0)
    metrics: dict[str, float] = dict(state.get("metrics", {}))
    for epoch in range(state.get("epoch", 0), cfg.epochs):
        epoch_metrics, skipped = train_epoch(job, epoch, skipped)
        last = epoch + 1 == cfg.epochs
        if job.rank == 0 and ((epoch + 1) % cfg.eval_every == 0 or last):
            evaluation = evaluate(job.model, job.val_loader, job.data.val, job.device)
            epoch_metrics.update(evaluation.metrics)
            metrics = dict(evaluation.metrics)
            if last and job.tracker:
                job.tracker.log_text(evaluation.summary, "coco_eval.txt")
                job.tracker.log_dict({"metrics": evaluation.metrics, "num_detections": evaluation.num_detections}, "evaluation.json")
        # The checkpoint first, with the epoch's metrics: a run killed before they reach MLflow logs them on resuming
        # (train: log_missing_metrics), and one killed after never trains the epoch, nor logs it, twice.
        if job.rank == 0:
            job.checkpoint.save({"epoch": epoch + 1, "model": job.model.state_dict(), "optimizer": job.optimizer.state_dict(),
                                 "scaler": job.scaler.state_dict(), "skipped": skipped, "run_id": run_id, "metrics": metrics,
                                 "epoch_metrics": epoch_metrics})
        if job.tracker:
            job.tracker.log_metrics(epoch_metrics, step=epoch + 1)
        if job.world_size > 1:
            dist.barrier()
        if on_epoch:
            on_epoch(epoch + 1, epoch_metrics)
    return metrics


@torch.no_grad()
def warm_ghm_state(job: Job, batches: int) -> None:
    """Run ``batches`` of epoch 0 through the detector as training does, without an update, so that GHM's moving averages of
    the region counts start from what the starting detector (``model.weights``: a warm start) gives, not from zero.

    The losses see exactly a training step's inputs; BatchNorm keeps its statistics (evaluation mode) and no parameter
    changes. Epoch 0 then trains on the same batches, in the same order.
    """
    model = job.model
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    model.train()
    for norm in norms:
        norm.eval()
    job.sampler.set_epoch(0)
    job.data.train.set_epoch(0, job.config.seed)
    try:
        for step, (images, targets) in enumerate(job.loader):
            if step == batches:
                break
            model([image.to(job.device) for image in images], [{k: v.to(job.device) for k, v in t.items()} for t in targets])
    finally:
        for norm in norms:
            norm.train()
    log.info("GHM's moving averages warmed on %d batches of the starting detector", min(batches, len(job.loader)))


def _log_model(job: Job) -> None:
    """The final detector as the run's MLflow logged model, linked to the final epoch's metrics; its size and time logged."""
    val = job.data.val
    with Image.open(val.images_dir / val.images[0]["file_name"]) as image:  # the input example: the first val image
        example = np.asarray(image.convert("RGB"))
    started = time.perf_counter()
    spec = detector_spec(OmegaConf.to_container(job.config.raw.model, resolve=True), job.config.pretrain.norm_eval, val)
    tags = {**source_tags(), **{k: job.tags[k] for k in ("loss_family", "baseline", "dataset", "model")}, "seed": str(job.config.seed)}
    model_id = log_detector(job.model, spec, [example], step=job.config.train.epochs, tags=tags)
    log.info("logged the detector as MLflow model %s (%.1f MB in %.1f s)", model_id,
             logged_model_bytes(job.tracker.client, model_id) / 1e6, time.perf_counter() - started)


def train_epoch(job: Job, epoch: int, skipped: int) -> tuple[dict[str, float], int]:
    """One epoch of steps; returns its metrics and the running count of skipped (non-finite) steps."""
    cfg = job.config.train
    (job.ddp or job.model).train()
    job.sampler.set_epoch(epoch)
    job.data.train.set_epoch(epoch, job.config.seed)
    phases = figure_phases(cfg.epochs * job.iters_per_epoch) if cfg.figures and job.rank == 0 else {}
    meter = EpochMeter(epoch, cfg.epochs, job.iters_per_epoch, show=job.rank == 0)
    for step, (images, targets) in enumerate(job.loader):
        if step == job.iters_per_epoch:
            break
        iteration = epoch * job.iters_per_epoch + step
        set_lr_factor(job.optimizer, lr_factor(cfg, iteration, job.iters_per_epoch))
        phase = phases.get(iteration)
        with observed_loss_inputs(job.model) if phase else nullcontext([]) as seen:
            losses = train_step(job, images, targets, f"epoch {epoch + 1}, step {step} (iteration {iteration})")
        if losses is None:
            skipped += 1
        elif phase and job.tracker and seen:
            log_figures(job.tracker, phase, seen[-1], job.model.cls_loss, job.model.reg_loss)
        meter.step(losses, len(images) * job.world_size, job.optimizer.param_groups[0]["lr"])
    return meter.metrics(job.optimizer.param_groups[0]["lr"], skipped), skipped


def train_step(job: Job, images: list[Tensor], targets: list[dict[str, Tensor]], where: str) -> dict[str, float] | None:
    """Forward (autocast under AMP), the non-finite policy, backward and the optimizer step.

    Returns the step's losses, or None for a non-finite step skipped under ``train.nonfinite=skip``.
    """
    images = [image.to(job.device, non_blocking=True) for image in images]
    targets = [{k: v.to(job.device, non_blocking=True) for k, v in t.items()} for t in targets]
    job.optimizer.zero_grad(set_to_none=True)
    try:
        with torch.autocast(job.device.type, dtype=torch.float16, enabled=job.amp):
            losses = (job.ddp or job.model)(images, targets)
        loss = losses["classification"] + losses["bbox_regression"]
        problem = None if torch.isfinite(loss) else ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
    except NonFiniteInputError as err:  # the predictions themselves diverged
        problem = str(err)
    if problem is not None:
        return _skip_nonfinite(job, where, problem)
    job.scaler.scale(loss).backward()
    if job.config.train.clip_grad_norm:
        job.scaler.unscale_(job.optimizer)
        nn.utils.clip_grad_norm_(job.model.parameters(), job.config.train.clip_grad_norm)
    job.scaler.step(job.optimizer)
    job.scaler.update()
    return {"loss": loss.item(), "loss_cls": losses["classification"].item(), "loss_box": losses["bbox_regression"].item()}


def _skip_nonfinite(job: Job, where: str, problem: str) -> None:
    """``train.nonfinite``: fail the run naming the step, or skip the step (no update)."""
    if job.config.train.nonfinite == "fail":
        raise NonFiniteLossError(f"non-finite loss at {where}: {problem}")
    log.warning("skipping a non-finite loss at %s: %s", where, problem)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let ``kill`` end a run like Ctrl-C: tracked as KILLED, resumable, instead of a run left RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
