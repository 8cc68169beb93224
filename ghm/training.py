"""One training run: data, detector, SGD schedule, checkpoints, evaluation and MLflow tracking.

Deterministic by design, since paired comparisons need it: the seed fixes the initial weights,
the data order (``DistributedSampler(seed)`` with ``set_epoch``) and the augmentation, so one
config always trains the same way, and a run resumed from its last epoch checkpoint ends with the
same weights as an uninterrupted one. Under ``torchrun`` it trains with DDP (rank 0 evaluates,
checkpoints and tracks).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ghm.coco import CocoDetection, collate
from ghm.config import CocoDataConfig, ConfigError, DigitsDataConfig, RunConfig, TrainConfig
from ghm.detector import GHMRetinaNet, build_detector
from ghm.digits_det import DigitsDetParams, ensure_digits_det
from ghm.evaluation import Evaluation, evaluate
from ghm.figures import batch_figures
from ghm.losses import NonFiniteInputError, build_loss
from ghm.tracking import PROJECT_DIR, RunTracker, code_version, pair_key

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf (``train.nonfinite=fail``)."""


@dataclass(frozen=True)
class Data:
    train: CocoDetection
    val: CocoDetection
    dataset_id: str


@dataclass
class RunResult:
    """What a finished run reports: final metrics (``mAP`` is the sweeps' objective) and its MLflow run."""

    metrics: dict[str, float]
    run_id: str | None
    checkpoint: Path


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device must be available: {name!r} was asked for but CUDA is not available")
    return torch.device(name)


def build_data(cfg: DigitsDataConfig | CocoDataConfig) -> Data:
    """The train and val splits, generating Digits-Det on first use."""
    if isinstance(cfg, DigitsDataConfig):
        params = DigitsDetParams(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DigitsDetParams)})
        cache = Path(cfg.cache_dir) if Path(cfg.cache_dir).is_absolute() else PROJECT_DIR / cfg.cache_dir
        splits = ensure_digits_det(params, cache)
        return Data(CocoDetection(splits["train"].images_dir, splits["train"].annotation_file, hflip=cfg.hflip),
                    CocoDetection(splits["val"].images_dir, splits["val"].annotation_file),
                    f"digits-det-{params.key()}")
    root = Path(cfg.root)
    train = CocoDetection(root / cfg.train_images, root / cfg.train_annotations, hflip=cfg.hflip)
    val = CocoDetection(root / cfg.val_images, root / cfg.val_annotations)
    if val.category_ids != train.category_ids:
        raise ConfigError(f"data: the categories of {val.annotation_file} differ from those of {train.annotation_file}")
    return Data(train, val, f"coco:{root.resolve()}")


def lr_factor(cfg: TrainConfig, iteration: int, iters_per_epoch: int) -> float:
    """Linear warm-up from ``warmup_ratio``, then steps at ``lr_steps`` epochs or a cosine decay."""
    total = cfg.epochs * iters_per_epoch
    if cfg.schedule == "step":
        factor = cfg.lr_gamma ** sum(iteration >= step * iters_per_epoch for step in cfg.lr_steps)
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * iteration / total))
    if iteration < cfg.warmup_iters:
        factor *= cfg.warmup_ratio + (1.0 - cfg.warmup_ratio) * iteration / cfg.warmup_iters
    return factor


def _distributed() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment, initialising the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


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


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)  # a crash mid-write never leaves a torn checkpoint


class Trainer:
    """Trains and evaluates one configured detector; :meth:`run` is the whole job."""

    def __init__(self, run: RunConfig, checkpoint_dir: Path,
                 on_epoch: Callable[[int, dict[str, float], str | None], None] | None = None,
                 parent_run_id: str | None = None, extra_tags: dict[str, str] | None = None) -> None:
        self.cfg = run
        self.train_cfg = run.train
        self.checkpoint = checkpoint_dir / "last.pt"
        self.on_epoch = on_epoch
        self.parent_run_id = parent_run_id
        self.extra_tags = extra_tags or {}
        self.world, self.rank, local_rank = _distributed()
        self.device = resolve_device(run.device, local_rank)
        if self.train_cfg.threads:
            torch.set_num_threads(self.train_cfg.threads)
        if self.train_cfg.batch_size % self.world:
            raise ConfigError(f"train.batch_size must be divisible by the {self.world} processes, got {self.train_cfg.batch_size}")
        self.data = build_data(run.data)
        torch.manual_seed(run.seed)  # the initial weights
        cls_settings, reg_settings = dict(run.loss.cls), dict(run.loss.reg)
        cls_loss = build_loss("classification", cls_settings.pop("name"), **cls_settings)
        reg_loss = build_loss("regression", reg_settings.pop("name"), **reg_settings)
        model_cfg = run.model
        self.model: GHMRetinaNet = build_detector(
            model_cfg.name, self.data.train.num_classes, cls_loss, reg_loss, width=model_cfg.width,
            fpn_channels=model_cfg.fpn_channels, anchor_sizes=list(model_cfg.anchor_sizes),
            aspect_ratios=list(model_cfg.aspect_ratios), min_size=model_cfg.min_size, max_size=model_cfg.max_size,
            per_level=model_cfg.per_level, score_thresh=model_cfg.score_thresh, nms_thresh=model_cfg.nms_thresh,
            detections_per_img=model_cfg.detections_per_img, weights=model_cfg.weights,
        ).to(self.device)
        self.ddp = DistributedDataParallel(self.model) if self.world > 1 else None
        lr = self.train_cfg.lr * self.train_cfg.batch_size / self.train_cfg.lr_reference_batch
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in trainable if p.ndim > 1]  # no weight decay on biases and norm parameters
        no_decay = [p for p in trainable if p.ndim <= 1]
        self.optimizer = torch.optim.SGD([{"params": decay, "weight_decay": self.train_cfg.weight_decay},
                                          {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=self.train_cfg.momentum)
        self.amp = self.train_cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.sampler = DistributedSampler(self.data.train, num_replicas=self.world, rank=self.rank, shuffle=True,
                                          seed=run.seed, drop_last=True)
        self.loader = DataLoader(self.data.train, batch_size=self.train_cfg.batch_size // self.world, sampler=self.sampler,
                                 collate_fn=collate, num_workers=self.train_cfg.num_workers, drop_last=True)
        full = len(self.loader)
        if full == 0:
            raise ConfigError(f"train.batch_size ({self.train_cfg.batch_size}) exceeds the {len(self.data.train)} training images")
        self.iters_per_epoch = min(full, self.train_cfg.max_iters_per_epoch or full)
        self.val_loader = DataLoader(self.data.val, batch_size=self.train_cfg.batch_size, collate_fn=collate,
                                     num_workers=self.train_cfg.num_workers)
        total = self.train_cfg.epochs * self.iters_per_epoch
        self.figure_steps = {0: "start", total // 2: "middle", total - 1: "end"} if self.train_cfg.figures else {}

    def tags(self) -> dict[str, str]:
        loss = self.cfg.loss
        return {"loss_family": loss.family, "baseline": str(loss.baseline).lower(), "dataset": self.data.dataset_id,
                "code_version": code_version(), "device": str(self.device), "model": self.cfg.model.name,
                "world_size": str(self.world), "pair_key": pair_key(self.cfg.raw), **self.extra_tags}

    def run(self) -> RunResult:
        """Train (resuming from the last checkpoint when there is one), evaluate and track."""
        with _sigterm_as_interrupt():
            return self._run()

    def _run(self) -> RunResult:
        state = self._load_checkpoint()
        tracker = RunTracker(self.cfg.mlflow.tracking_uri, self.cfg.mlflow.experiment_name) if self.rank == 0 else None
        context = tracker.start(run_id=state.get("run_id"), run_name=self.cfg.mlflow.run_name, tags=self.tags(),
                                config=self.cfg.raw, parent_run_id=self.parent_run_id) if tracker else nullcontext(None)
        with context as run_id:
            metrics = self._train(state, tracker, run_id)
        if self.world > 1:  # rank 0 evaluated and tracked: every rank returns its result
            shared = [metrics, run_id]
            dist.broadcast_object_list(shared, src=0)
            metrics, run_id = shared
        return RunResult(metrics=metrics, run_id=run_id, checkpoint=self.checkpoint)

    def _load_checkpoint(self) -> dict[str, Any]:
        if not (self.train_cfg.resume and self.checkpoint.is_file()):
            return {}
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        log.info("resuming from %s after epoch %d", self.checkpoint, state["epoch"])
        return state

    def _train(self, state: dict[str, Any], tracker: RunTracker | None, run_id: str | None) -> dict[str, float]:
        cfg = self.train_cfg
        start_epoch, skipped = state.get("epoch", 0), state.get("skipped", 0)
        metrics: dict[str, float] = dict(state.get("metrics", {}))
        for epoch in range(start_epoch, cfg.epochs):
            epoch_metrics, skipped = self._train_epoch(epoch, skipped, tracker)
            last = epoch + 1 == cfg.epochs
            if self.rank == 0 and ((epoch + 1) % cfg.eval_every == 0 or last):
                evaluation = evaluate(self.model, self.val_loader, self.data.val, self.device)
                epoch_metrics.update(evaluation.metrics)
                metrics = dict(evaluation.metrics)
                if last and tracker:
                    self._log_evaluation(tracker, evaluation)
            if tracker:
                tracker.log_metrics(epoch_metrics, step=epoch + 1)
            if self.rank == 0:
                _save_checkpoint(self.checkpoint, {"epoch": epoch + 1, "model": self.model.state_dict(),
                                                   "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                                                   "skipped": skipped, "run_id": run_id, "metrics": metrics})
            if self.world > 1:
                dist.barrier()
            if self.on_epoch:
                self.on_epoch(epoch + 1, epoch_metrics, run_id)
        return metrics

    def _train_epoch(self, epoch: int, skipped: int, tracker: RunTracker | None) -> tuple[dict[str, float], int]:
        cfg = self.train_cfg
        model = self.ddp or self.model
        model.train()
        self.sampler.set_epoch(epoch)
        self.data.train.set_epoch(epoch, self.cfg.seed)
        sums = {"loss": 0.0, "loss_cls": 0.0, "loss_box": 0.0}
        steps, images_seen, started = 0, 0, time.perf_counter()
        bar = tqdm(total=self.iters_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=self.rank != 0,
                   dynamic_ncols=True, mininterval=1.0)
        for step, (images, targets) in enumerate(self.loader):
            if step == self.iters_per_epoch:
                break
            iteration = epoch * self.iters_per_epoch + step
            factor = lr_factor(cfg, iteration, self.iters_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
            images = [image.to(self.device, non_blocking=True) for image in images]
            targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
            phase = self.figure_steps.get(iteration) if self.rank == 0 else None
            self.model.capture_loss_inputs = phase is not None
            try:
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                    losses = model(images, targets)
                loss = losses["classification"] + losses["bbox_regression"]
                problem = None if torch.isfinite(loss) else ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            except NonFiniteInputError as err:  # the predictions themselves diverged
                problem = str(err)
            if phase and tracker and problem is None:
                self._log_figures(tracker, phase)
            if problem is not None:
                if cfg.nonfinite == "fail":
                    raise NonFiniteLossError(f"non-finite loss at epoch {epoch + 1}, step {step} (iteration {iteration}): {problem}")
                skipped += 1
                log.warning("skipping a non-finite loss at epoch %d, step %d: %s (%d skipped)", epoch + 1, step, problem, skipped)
                self.optimizer.zero_grad(set_to_none=True)
                bar.update()
                continue
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.clip_grad_norm:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            values = {"loss": loss.item(), "loss_cls": losses["classification"].item(), "loss_box": losses["bbox_regression"].item()}
            for key, value in values.items():
                sums[key] += value
            steps += 1
            images_seen += len(images) * self.world
            bar.set_postfix(loss=f"{values['loss']:.3f}", cls=f"{values['loss_cls']:.3f}", box=f"{values['loss_box']:.3f}",
                            lr=f"{self.optimizer.param_groups[0]['lr']:.2e}", refresh=False)
            bar.update()
        bar.close()
        seconds = time.perf_counter() - started
        metrics = {f"train_{k}": v / max(steps, 1) for k, v in sums.items()}
        metrics.update({"lr": self.optimizer.param_groups[0]["lr"], "images_per_second": images_seen / seconds,
                        "epoch_seconds": seconds, "skipped_steps": float(skipped)})
        return metrics, skipped

    def _log_figures(self, tracker: RunTracker, phase: str) -> None:
        """The paper's figures from this step's live loss inputs, e.g. ``figures/start/gradient_norm_cls.png``."""
        inputs = self.model.loss_inputs
        self.model.capture_loss_inputs, self.model.loss_inputs = False, None
        if inputs is None:
            return
        cls, reg = self.cfg.loss.cls, self.cfg.loss.reg
        figures = batch_figures(inputs.cls_logits, inputs.cls_targets, inputs.cls_weights, inputs.box_deltas,
                                inputs.box_targets, inputs.box_weights, cls_bins=cls.get("bins", 30),
                                reg_bins=reg.get("bins", 10), mu=reg.get("mu", 0.02))
        for name, figure in figures.items():
            tracker.log_figure(figure, f"figures/{phase}/{name}.png")

    @staticmethod
    def _log_evaluation(tracker: RunTracker, evaluation: Evaluation) -> None:
        tracker.log_text(evaluation.summary, "coco_eval.txt")
        tracker.log_dict({"metrics": evaluation.metrics, "num_detections": evaluation.num_detections}, "evaluation.json")
