"""The entry point: ``python launch.py [overrides]`` (or ``python -m ghm``) trains and evaluates one run; ``-m`` sweeps.

The process-wide settings a run needs are made here, visibly, before the job is built: the
``torch.distributed`` process group under ``torchrun`` and torch's CPU threads (``train.threads``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ghm.comparison.pairing import Pairing
from ghm.config import ConfigError, register, validate
from ghm.detection.checkpoint import CheckpointError
from ghm.detection.training import train
from ghm.run import Processes, build_job
from ghm.sweep import task

log = logging.getLogger("launch")


def config_dir() -> str:
    """The config tree: ``conf/`` beside the package in a checkout, ``ghm/conf`` in an installed package."""
    installed = Path(__file__).resolve().with_name("conf")
    return str(installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "conf")


def start_processes() -> Processes:
    """Join ``torchrun``'s process group (from its environment) when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Processes(world_size=world, rank=int(os.environ.get("RANK", "0")), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        run = validate(cfg)
    except ConfigError as err:
        if task.in_trial():
            raise  # a sweep records the trial as failed
        log.error("config error: %s", err)
        sys.exit(2)
    if run.train.threads:
        torch.set_num_threads(run.train.threads)
    hydra_cfg = HydraConfig.get()
    job = build_job(run, Pairing.from_sweeper(hydra_cfg.sweeper), hydra_cfg.runtime.choices, start_processes())
    try:
        result = train(job, on_epoch=task.report_epoch)
    except CheckpointError as err:
        if task.in_trial():
            raise  # a sweep records the trial as failed, with this message
        log.error("checkpoint error: %s", err)
        sys.exit(2)
    log.info("%s: %s", run.loss.family, "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    if job.tracker and not task.in_trial():
        log.info("MLflow run %s -- browse with: mlflow ui --backend-store-uri %s", result.run_id, job.tracker.tracking_uri)
    return result.metrics["mAP"]


register()
