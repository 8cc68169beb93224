"""The sweeper's settings (``hydra.sweeper``), typed: Hydra's ConfigStore holds them, so a typo fails at compose.

``hydra_plugins/ghm_sweeper`` registers :class:`SweeperConf` as ``hydra/sweeper: ghm``, which takes
hydra-optuna-sweeper's keys too (``sampler``, ``direction``, ``storage``, ``study_name``,
``n_trials``, ``n_jobs``, ``params``, ``max_failure_rate``), and the samplers under
``hydra/sweeper/sampler``. The engine knows the task only through these settings:
what it returns and reports (``metric``, ``max_epochs``), how its runs pair (``baseline``,
``pair_by``, ``pair_ignore``) and where the sweep's MLflow parent run goes (``mlflow``), which the
task's config declares (``conf/config.yaml``); and whether the verdict goes to MLflow's Model
Registry (``registry``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class TPESamplerConf:
    """hydra-optuna-sweeper's keys and defaults (null: Optuna's own default)."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    consider_prior: bool | None = None
    prior_weight: float | None = None
    consider_magic_clip: bool | None = None
    consider_endpoints: bool | None = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    warn_independent_sampling: bool | None = None


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


MOTPE_REMOVED = ("The 'motpe' sampler was removed in Optuna 4.0. Use 'hydra/sweeper/sampler=tpe' instead. "
                 "TPESampler now handles multi-objective optimization.")


def motpe_removed(*args: Any, **kwargs: Any) -> None:
    """``hydra/sweeper/sampler=motpe``: the sampler left Optuna; the error says what replaces it (upstream's words)."""
    raise ValueError(MOTPE_REMOVED)


@dataclass
class GridSamplerConf:
    """The grid is the swept parameters' values: the sweeper completes this partial with it."""

    _target_: str = "optuna.samplers.GridSampler"
    _partial_: bool = True
    seed: int | None = None


@dataclass
class CmaEsSamplerConf:
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: int | None = None
    x0: dict[str, Any] | None = None
    sigma0: float | None = None
    independent_sampler: Any | None = None
    warn_independent_sampling: bool = True
    consider_pruned_trials: bool = False
    restart_strategy: Any | None = None
    inc_popsize: int = -1  # upstream: 2 with restart_strategy, which Optuna 4.4+ deprecates; -1 is Optuna's "unused"
    use_separable_cma: bool = False
    source_trials: Any | None = None


@dataclass
class NSGAIISamplerConf:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5
    constraints_func: Any | None = None


@dataclass
class MOTPESamplerConf:
    _target_: str = "ghm.sweep.config.motpe_removed"
    seed: int | None = None  # accepted, so that a config setting it reaches the removal message


@dataclass
class GPSamplerConf:
    _target_: str = "optuna.samplers.GPSampler"
    seed: int | None = None
    independent_sampler: Any | None = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False
    constraints_func: Any | None = None
    warn_independent_sampling: bool = True


@dataclass
class QMCSamplerConf:
    _target_: str = "optuna.samplers.QMCSampler"
    seed: int | None = None
    qmc_type: str = "sobol"
    scramble: bool = False
    independent_sampler: Any | None = None
    warn_asynchronous_seeding: bool = True
    warn_independent_sampling: bool = True


@dataclass
class RaySettings:
    address: str | None = None  # a running cluster ("ray://host:10001" or "host:6379"); default: RAY_ADDRESS, else local
    warm_head: bool = True  # no address: join this machine's warm local Ray head (started if none runs, kept for the next sweep)
    idle_timeout_s: float = 600.0  # the warm head stops after this long without a sweep (0: when this sweep ends)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractions share a GPU between trials
    storage_path: str | None = None  # Ray Tune's experiments (a shared path on clusters); default: the user's cache (engine.state_dir)
    max_retries: int = 2  # a trial whose worker died is retried from its last checkpoint
    verbose: int = 0  # Ray Tune's own console output (1: its status tables, 2: every result); 0: Hydra-style lines only


@dataclass
class PrunerSettings:
    enabled: bool = True  # ASHA on the per-epoch objective, in Optuna searches (grids run every trial to the end)
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass
class ArmConf:
    """One arm of a tuned comparison: what it is (the scientific choice) and the nuisance it alone searches."""

    overrides: list[str] = field(default_factory=list)  # e.g. [loss=ghm]: every job of the arm gets them
    params: dict[str, str] = field(default_factory=dict)  # the arm's own nuisance space (hydra.sweeper.params' grammar), same budget


@dataclass
class TuningSettings:
    """How each arm of a tuned comparison is searched: the same sampler, pruner and budget for every arm."""

    budget: int = 16  # search trials per arm, each run on every tuning seed; pruned and failed ones count against it (0: no search)
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # a search trial's value is its mean over these; confirmation seeds follow


@dataclass
class SequentialSettings:
    """Confirmation seeds added in batches until the interval excludes 0, at planned looks with a corrected level."""

    enabled: bool = False
    batch: int = 3  # seeds added at each look after the first (confirm_seeds)
    max_seeds: int = 15  # fixed in advance: the last look
    boundary: str = "pocock"  # pocock | obrien_fleming | bonferroni (ghm.comparison.power)
    alpha: float = 0.05  # the overall two-sided level over every look


@dataclass
class TrackingSettings:
    """The sweep's MLflow parent run: none unless the task declares an experiment."""

    experiment_name: str | None = None
    tracking_uri: str | None = None  # null: MLFLOW_TRACKING_URI, else mlflow.db in the launching directory


@dataclass
class RegistrySettings:
    """The sweep's verdict in MLflow's Model Registry: the best setting's detector and the baseline's, the better aliased."""

    enabled: bool = False  # on in the compose stack (docker-compose.yml's launcher)
    name: str = "ghm-detector"  # the registered model's name


@dataclass
class OptunaSweeperConf:
    """hydra-optuna-sweeper's ``OptunaSweeperConf``: the same keys and defaults."""

    _target_: str = "hydra_plugins.ghm_sweeper.ghm_sweeper.OptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    sampler: Any = MISSING
    direction: Any = "minimize"  # or a list of directions: a multi-objective study
    storage: Any | None = None  # null: an in-memory study
    study_name: str | None = None
    n_trials: int = 20
    n_jobs: int = 2  # the trials of one batch, launched together through hydra/launcher
    max_failure_rate: float = 0.0  # per batch; exceeded: the sweep stops with the task's exception
    search_space: dict[str, Any] | None = None  # deprecated upstream: hydra.sweeper.params
    params: dict[str, str] | None = None
    custom_search_space: str | None = None  # "module.function"(config, trial): suggests more parameters per trial
    mlflow: TrackingSettings = field(default_factory=TrackingSettings)  # beyond upstream: a parent run with the results


@dataclass
class SweeperConf:
    _target_: str = "hydra_plugins.ghm_sweeper.ghm_sweeper.GHMSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    search: str = "auto"  # auto | grid | optuna (auto: optuna when params sweep anything, else a grid)
    sampler: Any = MISSING
    direction: str = "maximize"
    storage: str | None = None  # Optuna RDB URL; default: OPTUNA_STORAGE, else a SQLite file in the user's cache (engine.state_dir)
    study_name: str | None = None  # default: derived from the sweep's definition (same command, same study)
    n_trials: int = 20
    n_jobs: int = 2
    params: dict[str, str] = field(default_factory=dict)
    max_failure_rate: float = 0.0
    metric: str = "objective"  # the name of the task's return value (and of its per-epoch reports)
    max_epochs: int | None = None  # how many epochs the task reports at most (ASHA's horizon); null: 100
    baseline: str | None = "loss=focal"  # an override selecting the baseline's trials
    pair_by: str = "seed"  # runs that differ only in the baseline's key are paired by their value of this key
    pair_ignore: list[str] = field(default_factory=list)  # config keys that never make two runs differ (paths, tracking)
    reuse: str = "baselines"  # baselines | finished: which grid points a finished run of the identical config answers
    confirm_seeds: int = 0  # re-run the best setting and the baseline on this many fresh values of pair_by
    arms: dict[str, ArmConf] = field(default_factory=dict)  # a tuned comparison: each arm searches params (+ its own) with `tuning`
    conditions: dict[str, str] = field(default_factory=dict)  # with arms: listed values (key: "a,b"), each combination its own comparison
    tuning: TuningSettings = field(default_factory=TuningSettings)
    sequential: SequentialSettings = field(default_factory=SequentialSettings)
    effect_of_interest: float | None = None  # a difference worth detecting: each verdict says how many seeds detect it
    fixed_settings_for: str | None = None  # which arm the task's fixed settings were chosen for (e.g. loss=focal): said by untuned verdicts
    resume: bool = True
    mlflow: TrackingSettings = field(default_factory=TrackingSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    ray: RaySettings = field(default_factory=RaySettings)
    pruner: PrunerSettings = field(default_factory=PrunerSettings)

    def check(self) -> None:
        """Refuse values the engine cannot run, naming the key and what is allowed."""
        if self.search not in ("auto", "grid", "optuna"):
            raise ValueError(f"hydra.sweeper.search must be auto, grid or optuna, got {self.search!r}")
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction must be maximize or minimize, got {self.direction!r} "
                             "(several directions: hydra/sweeper=optuna)")
        target = self.sampler.get("_target_") if isinstance(self.sampler, dict) else getattr(self.sampler, "_target_", None)
        if target == "optuna.samplers.GridSampler":
            raise ValueError("hydra/sweeper/sampler=grid is hydra/sweeper=optuna's; under hydra/sweeper=ghm command-line lists "
                             "(a=1,2 b=3,4) are the grid")
        if self.n_jobs < 1 or self.n_trials < 1:
            raise ValueError("hydra.sweeper.n_jobs and hydra.sweeper.n_trials must be >= 1")
        if self.reuse not in ("baselines", "finished"):
            raise ValueError(f"hydra.sweeper.reuse must be baselines or finished, got {self.reuse!r}")
        if self.ray.idle_timeout_s < 0:
            raise ValueError(f"hydra.sweeper.ray.idle_timeout_s must be >= 0 (0: the warm head stops when the sweep ends), "
                             f"got {self.ray.idle_timeout_s}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate must be in [0, 1], got {self.max_failure_rate}")
        if self.effect_of_interest is not None and self.effect_of_interest <= 0:
            raise ValueError(f"hydra.sweeper.effect_of_interest must be > 0 (a difference worth detecting), got {self.effect_of_interest}")
        sequential = self.sequential
        if sequential.enabled:
            if self.confirm_seeds < 2 and not self.arms:
                raise ValueError("hydra.sweeper.sequential needs hydra.sweeper.confirm_seeds >= 2 (the first look)")
            if sequential.batch < 1 or sequential.max_seeds < max(self.confirm_seeds, 2):
                raise ValueError(f"hydra.sweeper.sequential: batch must be >= 1 and max_seeds >= confirm_seeds ({self.confirm_seeds}), "
                                 f"got batch={sequential.batch}, max_seeds={sequential.max_seeds}")
            if sequential.boundary not in ("pocock", "obrien_fleming", "bonferroni"):
                raise ValueError("hydra.sweeper.sequential.boundary must be pocock, obrien_fleming or bonferroni, "
                                 f"got {sequential.boundary!r}")
            if not 0.0 < sequential.alpha < 1.0:
                raise ValueError(f"hydra.sweeper.sequential.alpha must be in (0, 1), got {sequential.alpha}")
        if self.registry.enabled and not self.registry.name.strip():
            raise ValueError("hydra.sweeper.registry.name must name the registered model when hydra.sweeper.registry.enabled=true, "
                             f"got {self.registry.name!r}")
        if self.registry.enabled and self.mlflow.experiment_name is None:
            raise ValueError("hydra.sweeper.registry.enabled=true needs the sweep's MLflow runs: set hydra.sweeper.mlflow.experiment_name")
        if self.conditions and not self.arms:
            raise ValueError("hydra.sweeper.conditions are crossed with hydra.sweeper.arms: without arms, list the values on the "
                             "command line (a grid)")
        if self.arms:
            self._check_arms()

    def _check_arms(self) -> None:
        """A tuned comparison: two arms or more, one of them the baseline, seeds to tune and to confirm on."""
        if len(self.arms) < 2:
            raise ValueError(f"hydra.sweeper.arms needs two arms or more to compare, got {list(self.arms)}")
        if self.tuning.budget == 0 and (self.params or any(arm.params for arm in self.arms.values())):
            raise ValueError("hydra.sweeper.tuning.budget=0 searches nothing: drop hydra.sweeper.params and the arms' params (fix those "
                             "settings in the arms' overrides; listed values to compare in are hydra.sweeper.conditions), or give a budget")
        if self.search == "grid" and self.tuning.budget > 0:
            raise ValueError("hydra.sweeper.arms tunes each arm with an Optuna search: hydra.sweeper.search must be auto or optuna")
        if not self.baseline or not any(self.baseline in arm.overrides for arm in self.arms.values()):
            raise ValueError(f"hydra.sweeper.baseline ({self.baseline!r}) must be one of the arms' overrides: "
                             + "; ".join(f"{name}: {arm.overrides}" for name, arm in self.arms.items()))
        for name, arm in self.arms.items():
            if not arm.overrides:
                raise ValueError(f"hydra.sweeper.arms.{name}.overrides must say what the arm is (e.g. [loss=ghm])")
            shared = sorted(set(arm.params) & set(self.params))
            if shared:
                raise ValueError(f"hydra.sweeper.arms.{name}.params repeats {shared} of hydra.sweeper.params: give each key once")
        if self.tuning.budget < 0 or (self.tuning.budget > 0 and not self.tuning.seeds) \
                or len(set(self.tuning.seeds)) != len(self.tuning.seeds):
            raise ValueError(f"hydra.sweeper.tuning needs budget >= 0 and distinct seeds (some, to search), got "
                             f"budget={self.tuning.budget}, seeds={list(self.tuning.seeds)}")
        if self.confirm_seeds < 2:
            raise ValueError("hydra.sweeper.arms: each arm's best is confirmed on fresh seeds: hydra.sweeper.confirm_seeds must be >= 2, "
                             f"got {self.confirm_seeds}")
