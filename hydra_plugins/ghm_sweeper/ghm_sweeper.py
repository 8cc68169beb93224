"""Hydra sweeper plugin: a thin adapter from ``hydra.sweeper`` to :class:`ghm.sweep.SweepEngine`.

Selected by default in ``conf/config.yaml`` (``hydra/sweeper: ghm``). It is also registered as
``hydra/sweeper: optuna``, with the ``hydra/sweeper/sampler`` options of hydra-optuna-sweeper, and
takes that plugin's keys (``sampler``, ``direction``, ``storage``, ``study_name``, ``n_trials``,
``n_jobs``, ``params``, ``max_failure_rate``), so an app written for it runs unchanged.
"""


from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig, OmegaConf

from ghm.sweep.engine import SweepEngine, SweepSettings


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class RaySettings:
    address: str | None = None  # a running cluster ("ray://host:10001" or "host:6379"); default: RAY_ADDRESS, else local
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractions share a GPU between trials
    storage_path: str | None = None  # Ray Tune results and checkpoints (a shared path on clusters)
    max_retries: int = 2  # a trial whose worker died is retried from its last checkpoint


@dataclass
class PrunerSettings:
    enabled: bool = True  # ASHA on the per-epoch objective, in Optuna searches (grids run every trial to the end)
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass
class GHMSweeperConf:
    _target_: str = "hydra_plugins.ghm_sweeper.ghm_sweeper.GHMSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    search: str = "auto"  # auto | grid | optuna (auto: optuna when params sweep anything, else a grid)
    sampler: Any = MISSING
    direction: str = "maximize"
    storage: str | None = None
    study_name: str | None = None
    n_trials: int = 20
    n_jobs: int = 2
    params: dict[str, str] = field(default_factory=dict)
    max_failure_rate: float = 0.0
    metric: str = "objective"  # the name of the task's return value (and of its per-epoch reports)
    baseline: str | None = "loss=focal"  # an override selecting the baseline's trials
    pair_by: str = "seed"  # runs that differ only in the baseline's key are paired by their value of this key
    pair_ignore: list[str] = field(default_factory=list)  # config keys that never make two runs differ (paths, tracking)
    confirm_seeds: int = 0
    resume: bool = True
    ray: RaySettings = field(default_factory=RaySettings)
    pruner: PrunerSettings = field(default_factory=PrunerSettings)


class GHMSweeper(Sweeper):
    """Grids and Optuna searches run asynchronously on Ray Tune, with baselines and paired comparison."""

    def __init__(self, **settings: Any) -> None:
        settings.pop("defaults", None)
        ray = settings.pop("ray")
        pruner = settings.pop("pruner")
        direction = settings.pop("direction")
        direction = getattr(direction, "name", direction)  # hydra-optuna-sweeper's Direction enum or a string
        params = settings.pop("params")
        pair_ignore = tuple(settings.pop("pair_ignore"))
        self.settings = SweepSettings(
            direction=str(direction), params=dict(params) if params else None, pair_ignore=pair_ignore, ray_address=ray["address"],
            cpus_per_trial=ray["cpus_per_trial"], gpus_per_trial=ray["gpus_per_trial"], storage_path=ray["storage_path"],
            max_retries=ray["max_retries"], prune=pruner["enabled"], grace_period=pruner["grace_period"],
            reduction_factor=pruner["reduction_factor"], **settings,
        )
        self.engine: SweepEngine | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        sampler = OmegaConf.select(config, "hydra.sweeper.sampler")
        self.settings.sampler = OmegaConf.to_container(sampler, resolve=True) if sampler is not None else None
        self.engine = SweepEngine(self.settings, hydra_context, task_function, config)

    def sweep(self, arguments: list[str]) -> Any:
        assert self.engine is not None, "setup() first"
        return self.engine.run(arguments)


def _register() -> None:
    store = ConfigStore.instance()
    for name in ("ghm", "optuna"):
        store.store(group="hydra/sweeper", name=name, node=GHMSweeperConf, provider="ghm_sweeper")
    store.store(group="hydra/sweeper/sampler", name="tpe", node=TPESamplerConf, provider="ghm_sweeper")
    store.store(group="hydra/sweeper/sampler", name="random", node=RandomSamplerConf, provider="ghm_sweeper")


_register()
