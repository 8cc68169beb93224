"""Hydra sweeper plugins: ``hydra/sweeper: ghm`` (the project's) and ``hydra/sweeper: optuna`` (hydra-optuna-sweeper's).

``ghm`` (the default in ``conf/config.yaml``) is a thin adapter from ``hydra.sweeper`` to
:class:`ghm.sweep.engine.Sweep`: grids and Optuna searches on Ray Tune, with pruning, resume,
baselines and paired comparison; its settings are the typed :class:`ghm.sweep.config.SweeperConf`.
``optuna`` is hydra-optuna-sweeper's behaviour and config (:mod:`ghm.sweep.optuna_sweeper`), so
an app written for that plugin runs unchanged; where the ``hydra-optuna-sweeper`` distribution is
installed and its package is the one Python imports, ``optuna`` is left to it, and a warning says
which one is active and how to choose (:mod:`ghm.sweep.drop_in`). Both share the ``hydra/sweeper/sampler`` options of
that plugin: ``tpe``, ``random``, ``grid``, ``cmaes``, ``nsgaii``, ``qmc``, ``gp`` (and ``motpe``,
which fails with upstream's message: Optuna removed it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from ghm.sweep.config import (
    CmaEsSamplerConf,
    GPSamplerConf,
    GridSamplerConf,
    MOTPESamplerConf,
    NSGAIISamplerConf,
    OptunaSweeperConf,
    QMCSamplerConf,
    RandomSamplerConf,
    SweeperConf,
    TPESamplerConf,
)
from ghm.sweep.drop_in import announce

if TYPE_CHECKING:  # the engines import MLflow, Ray and Optuna: only a sweep pays for them, not every start of an app
    from ghm.sweep.engine import Sweep
    from ghm.sweep.optuna_sweeper import OptunaSweep


class GHMSweeper(Sweeper):
    """Grids and Optuna searches run asynchronously on Ray Tune, with baselines and paired comparison."""

    def __init__(self, **settings: Any) -> None:
        """Hydra passes the settings here with the sampler already built; :meth:`setup` reads them, typed, from the config."""
        self.sweep_engine: Sweep | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from ghm.sweep.engine import Sweep

        settings: SweeperConf = OmegaConf.to_object(config.hydra.sweeper)
        self.sweep_engine = Sweep(settings, hydra_context, task_function, config)

    def sweep(self, arguments: list[str]) -> None:
        from ghm.sweep.trials import ray_session

        assert self.sweep_engine is not None, "setup() first"
        with ray_session(self.sweep_engine.settings.ray):  # first, so that the sweep's first line says which Ray it runs on
            self.sweep_engine.run(arguments)


class OptunaSweeper(Sweeper):
    """hydra-optuna-sweeper's sweeper: batches of ``n_jobs`` trials through Hydra's launcher, ``optimization_results.yaml``."""

    def __init__(self, sampler: Any, **settings: Any) -> None:
        """Hydra passes the sampler built (the grid's as a partial); the other settings are read, typed, in :meth:`setup`."""
        self.sampler = sampler
        self.optuna_sweep: OptunaSweep | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from ghm.sweep.optuna_sweeper import OptunaSweep

        settings: OptunaSweeperConf = OmegaConf.to_object(config.hydra.sweeper)
        self.optuna_sweep = OptunaSweep(settings, self.sampler, hydra_context, task_function, config)

    def sweep(self, arguments: list[str]) -> None:
        assert self.optuna_sweep is not None, "setup() first"
        self.optuna_sweep.run(arguments)


def _register() -> None:
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="ghm", node=SweeperConf, provider="ghm_sweeper")
    if announce().drop_in_active:  # an installed hydra-optuna-sweeper whose package Python imports registers its own
        store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="ghm_sweeper")
    samplers = {"tpe": TPESamplerConf, "random": RandomSamplerConf, "grid": GridSamplerConf, "cmaes": CmaEsSamplerConf,
                "nsgaii": NSGAIISamplerConf, "motpe": MOTPESamplerConf, "gp": GPSamplerConf, "qmc": QMCSamplerConf}
    for name, node in samplers.items():
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="ghm_sweeper")


_register()
