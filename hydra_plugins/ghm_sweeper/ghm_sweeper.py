"""Hydra sweeper plugin: a thin adapter from ``hydra.sweeper`` to :class:`ghm.sweep.engine.Sweep`.

Selected by default in ``conf/config.yaml`` (``hydra/sweeper: ghm``). It is also registered as
``hydra/sweeper: optuna``, with the ``hydra/sweeper/sampler`` options of hydra-optuna-sweeper, and
takes that plugin's keys (``sampler``, ``direction``, ``storage``, ``study_name``, ``n_trials``,
``n_jobs``, ``params``, ``max_failure_rate``), so an app written for it runs unchanged. The
settings are the typed :class:`ghm.sweep.config.SweeperConf`.
"""

from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from ghm.sweep.config import RandomSamplerConf, SweeperConf, TPESamplerConf
from ghm.sweep.engine import Sweep


class GHMSweeper(Sweeper):
    """Grids and Optuna searches run asynchronously on Ray Tune, with baselines and paired comparison."""

    def __init__(self, **settings: Any) -> None:
        """Hydra passes the settings here with the sampler already built; :meth:`setup` reads them, typed, from the config."""
        self.sweep_engine: Sweep | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        settings: SweeperConf = OmegaConf.to_object(config.hydra.sweeper)
        self.sweep_engine = Sweep(settings, hydra_context, task_function, config)

    def sweep(self, arguments: list[str]) -> None:
        assert self.sweep_engine is not None, "setup() first"
        self.sweep_engine.run(arguments)


def _register() -> None:
    store = ConfigStore.instance()
    for name in ("ghm", "optuna"):
        store.store(group="hydra/sweeper", name=name, node=SweeperConf, provider="ghm_sweeper")
    store.store(group="hydra/sweeper/sampler", name="tpe", node=TPESamplerConf, provider="ghm_sweeper")
    store.store(group="hydra/sweeper/sampler", name="random", node=RandomSamplerConf, provider="ghm_sweeper")


_register()
