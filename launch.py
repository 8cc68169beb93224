"""Entry point: ``python launch.py [overrides]`` trains and evaluates one run; ``-m`` sweeps (see README)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ghm import trial
from ghm.config import ConfigError, register, validate
from ghm.tracking import default_tracking_uri
from ghm.training import Trainer

register()
log = logging.getLogger("launch")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        run = validate(cfg)
    except ConfigError as err:
        if trial.current() is not None:
            raise  # a sweep records the trial as failed
        log.error("config error: %s", err)
        sys.exit(2)
    context = trial.current()
    trainer = Trainer(run, Path(cfg.checkpoint_dir), on_epoch=context.on_epoch if context else None,
                      parent_run_id=context.parent_run_id if context else None, extra_tags=context.tags if context else None)
    result = trainer.run()
    summary = "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    log.info("%s: %s", run.loss.family, summary)
    if context is None:
        log.info("MLflow run %s -- browse with: mlflow ui --backend-store-uri %s", result.run_id,
                 run.mlflow.tracking_uri or default_tracking_uri())
    return result.metrics["mAP"]


if __name__ == "__main__":
    main()
