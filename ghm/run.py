"""The composition root: one training job built from its validated config.

:func:`build_job` builds every part a run needs, in one place and in a fixed order (the data,
then the losses and the model from the seed, the optimizer, the loaders, the checkpoint and the
tracker with its tags); :func:`ghm.detection.training.train` runs it. Process-wide settings
(``torch.distributed``'s process group, torch's CPU threads) are made by the entry point
(:mod:`ghm.app`) before, and the job only reads them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ghm.comparison.pairing import Pairing
from ghm.config import ConfigError, DigitsPretrainConfig, RunConfig, instantiate_labelled
from ghm.data.coco import DetectionData, collate
from ghm.data.digits_det import DigitsDetParams
from ghm.detection.checkpoint import Checkpoint, RunIdentity
from ghm.detection.model import GHMRetinaNet
from ghm.detection.pretraining import PretrainedBackbone, PretrainingParams, ensure_pretrained_backbone, record_in_mlflow
from ghm.detection.schedule import base_lr
from ghm.tracking.run import RunTracker
from ghm.tracking.store import default_tracking_uri
from ghm.tracking.version import code_version

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's place under ``torchrun`` (one process: the defaults)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0


@dataclass
class Job:
    """Everything one training run uses, built from its config by :func:`build_job`."""

    config: RunConfig
    device: torch.device
    world_size: int
    rank: int
    data: DetectionData
    model: GHMRetinaNet
    ddp: DistributedDataParallel | None  # the model as trained under torchrun, else None
    optimizer: torch.optim.Optimizer
    amp: bool
    scaler: torch.amp.GradScaler
    sampler: DistributedSampler
    loader: DataLoader
    val_loader: DataLoader
    iters_per_epoch: int
    checkpoint: Checkpoint
    tracker: RunTracker | None  # rank 0's
    tags: dict[str, str]


def build_job(run: RunConfig, pairing: Pairing, choices: Mapping[str, str], processes: Processes = Processes()) -> Job:
    """Build the run's parts; ``pairing`` and Hydra's group ``choices`` decide its ``baseline`` and ``pair_key`` tags."""
    cfg = run.train
    if cfg.batch_size % processes.world_size:
        raise ConfigError(f"train.batch_size must be divisible by the {processes.world_size} processes, got {cfg.batch_size}")
    device = resolve_device(run.device, processes.local_rank)
    data: DetectionData = instantiate_labelled(run.raw.data)
    pretrained = pretrained_backbone(run) if isinstance(run.pretrain, DigitsPretrainConfig) else None
    backbone_weights = str(pretrained.weights) if pretrained else getattr(run.pretrain, "weights", None)
    model = build_model(run, data.train.num_classes, backbone_weights, cfg.batch_size // processes.world_size).to(device)
    sampler = DistributedSampler(data.train, num_replicas=processes.world_size, rank=processes.rank, shuffle=True, seed=run.seed,
                                 drop_last=True)
    loader = DataLoader(data.train, batch_size=cfg.batch_size // processes.world_size, sampler=sampler, collate_fn=collate,
                        num_workers=cfg.num_workers, drop_last=True)
    if len(loader) == 0:
        raise ConfigError(f"train.batch_size ({cfg.batch_size}) exceeds the {len(data.train)} training images")
    amp = cfg.amp and device.type == "cuda"
    tracker = RunTracker(run.mlflow.tracking_uri or default_tracking_uri(run.paths.root_dir), run.mlflow.experiment_name) \
        if processes.rank == 0 else None
    tags = {"loss_family": run.loss.family, "baseline": str(pairing.is_baseline_run(run.raw, choices)).lower(),
            "dataset": data.dataset_id, "code_version": code_version(), "device": str(device), "model": run.model.name,
            "world_size": str(processes.world_size), "pair_key": pairing.pair_key(run.raw, code_version()),
            "config_key": pairing.config_key(run.raw, code_version())}
    if tracker and pretrained:  # the run points at the run that trained its backbone
        tags["backbone_run_id"] = record_in_mlflow(pretrained, tracker.tracking_uri)
    return Job(config=run, device=device, world_size=processes.world_size, rank=processes.rank, data=data, model=model,
               ddp=_distributed(model) if processes.world_size > 1 else None, optimizer=build_optimizer(run, model),
               amp=amp, scaler=torch.amp.GradScaler("cuda", enabled=amp), sampler=sampler, loader=loader,
               val_loader=DataLoader(data.val, batch_size=cfg.batch_size, collate_fn=collate, num_workers=cfg.num_workers),
               iters_per_epoch=min(len(loader), cfg.max_iters_per_epoch or len(loader)),
               checkpoint=Checkpoint(Path(run.raw.checkpoint_dir), RunIdentity.of(run.raw, code_version())), tracker=tracker,
               tags=tags)


def resolve_device(name: str, local_rank: int) -> torch.device:
    """``device``: ``auto`` is this rank's GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device must be available: {name!r} was asked for but CUDA is not available")
    return torch.device(name)


def build_model(run: RunConfig, num_classes: int, backbone_weights: str | None = None, images_per_step: int | None = None) -> GHMRetinaNet:
    """The detector with the configured losses and backbone start, its initial weights drawn from the run's seed alone.

    ``images_per_step`` (one process's) sizes the groups of ``model.ghm_scope=official``; default ``train.batch_size``.
    """
    cls_loss = instantiate_labelled(run.raw.loss.cls)
    reg_loss = instantiate_labelled(run.raw.loss.reg)
    with torch.random.fork_rng(devices=[]):  # the seed fixes the weights without touching the process's random state
        torch.manual_seed(run.seed)
        return instantiate_labelled(run.raw.model, num_classes=num_classes, cls_loss=cls_loss, reg_loss=reg_loss,
                                    backbone_weights=backbone_weights, frozen_stages=run.pretrain.frozen_stages,
                                    images_per_step=images_per_step or run.train.batch_size,
                                    norm_eval=run.pretrain.norm_eval, _convert_="all")


def pretrained_backbone(run: RunConfig) -> PretrainedBackbone:
    """The embedded pretraining stage's backbone for this run's Digits-Det look and width (trained once, cached)."""
    return ensure_pretrained_backbone(_fields(run.pretrain, PretrainingParams), _fields(run.data, DigitsDetParams),
                                      run.model.width, Path(run.pretrain.cache_dir))


def _fields(config: object, params: type[T]) -> T:
    """The parameters ``params`` (a dataclass) read from a config node that holds them among other keys."""
    return params(**{f.name: getattr(config, f.name) for f in dataclasses.fields(params)})


def build_optimizer(run: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum; no weight decay on biases and normalisation parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim > 1], "weight_decay": run.train.weight_decay},
              {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=base_lr(run.train), momentum=run.train.momentum)


def _distributed(model: torch.nn.Module) -> DistributedDataParallel:
    """DDP without broadcasting buffers, as mmdetection wraps its detectors: under ``ghm_scope=official`` each rank's GHM
    state (the EMA of its own images' counts) stays its own, as each GPU's does in the official code, instead of being
    overwritten by rank 0's at every forward (a whole-batch density is all-reduced, so the ranks' states agree anyway)."""
    return DistributedDataParallel(model, broadcast_buffers=False)
