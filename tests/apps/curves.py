"""A cheap task with learning curves for sweeper tests: reports an objective per epoch, like launch.py.

The curve of setting ``x`` rises to ``x`` over ``epochs`` epochs (to 0.5 for ``loss=baseline``); ``fail_above`` makes larger
``x`` raise; every execution appends its process id to ``<log>.started`` when it starts and a line to ``<log>`` when it
ends, so tests can count executions and find the Ray node running one; ``busy_seconds`` of CPU work and ``+mlflow_uri``
(a run per trial, the objective logged every epoch, as launch.py does) serve the sweep benchmark and the cluster tests;
``die_once=<file>`` kills the worker process the first time (a Ray worker death). With ``lr`` set, the final value also
depends on a nuisance setting: it falls by 0.1 per decade squared between ``lr`` and the loss's own best rate (``best_lr``),
and ``noise`` adds a seeded draw per (seed, loss, lr, x): the tuned comparison's tests.
"""

import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ghm.sweep.task import report_epoch
from ghm.tracking.run import RunTracker


@hydra.main(version_base=None, config_path=".", config_name="curves")
def curves(cfg: DictConfig) -> float:
    if cfg.die_once and not Path(cfg.die_once).exists():  # the worker process dies (once), mid-trial
        Path(cfg.die_once).touch()
        os._exit(1)
    if cfg.fail_above is not None and cfg.x > cfg.fail_above:
        raise ValueError(f"x={cfg.x} is above {cfg.fail_above}")
    with Path(f"{cfg.log}.started").open("a") as started:
        started.write(f"{os.getpid()}\n")
    experiment = OmegaConf.select(cfg, "mlflow.experiment_name", default="curves")  # the sweep's parent run is there too
    tracker = RunTracker(cfg.mlflow_uri, experiment) if cfg.get("mlflow_uri") else None
    with tracker.start(run_id=None, run_name=None, tags={}, config=cfg) if tracker else nullcontext():
        value = _learn(cfg, tracker)
    with Path(cfg.log).open("a") as log:
        log.write(f"x={cfg.x} seed={cfg.seed}\n")
    return value


def _learn(cfg: DictConfig, tracker: RunTracker | None) -> float:
    busy_until = time.process_time() + cfg.busy_seconds
    while time.process_time() < busy_until:  # single-thread CPU work, for the concurrency benchmark
        pass
    value = 0.0
    final = final_value(cfg.loss, cfg.x, cfg.seed, cfg.lr, cfg.best_lr[cfg.loss] if cfg.lr is not None else None, cfg.noise)
    for epoch in range(1, cfg.train.epochs + 1):
        time.sleep(cfg.seconds_per_epoch)
        value = final * epoch / cfg.train.epochs
        if tracker:
            tracker.log_metrics({"objective": value}, step=epoch)
        report_epoch(epoch, {"objective": value})
    return value


def final_value(loss: str, x: float, seed: int, lr: float | None, best_lr: float | None, noise: float) -> float:
    """The objective a trial ends at (the tests recompute it independently of the sweep)."""
    value = 0.5 if loss == "baseline" else x
    if lr is not None:
        value -= 0.1 * math.log10(lr / best_lr) ** 2
    if noise:
        value += noise * random.Random(f"{seed}-{loss}-{lr}-{x}").gauss(0.0, 1.0)
    return value


if __name__ == "__main__":
    curves()
