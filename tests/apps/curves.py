"""A cheap task with learning curves for sweeper tests: reports an objective per epoch, like launch.py.

The curve of setting ``x`` rises to ``x`` over ``epochs`` epochs; ``fail_above`` makes larger
``x`` raise; every execution appends a line to ``<log>`` so tests can count executions.
"""

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ghm import trial


@hydra.main(version_base=None, config_path=".", config_name="curves")
def curves(cfg: DictConfig) -> float:
    if cfg.fail_above is not None and cfg.x > cfg.fail_above:
        raise ValueError(f"x={cfg.x} is above {cfg.fail_above}")
    context = trial.current()
    value = 0.0
    for epoch in range(1, cfg.train.epochs + 1):
        time.sleep(cfg.seconds_per_epoch)
        value = cfg.x * epoch / cfg.train.epochs
        if context:
            context.on_epoch(epoch, {"objective": value}, None)
    with Path(cfg.log).open("a") as log:
        log.write(f"x={cfg.x} seed={cfg.seed}\n")
    return value


if __name__ == "__main__":
    curves()
