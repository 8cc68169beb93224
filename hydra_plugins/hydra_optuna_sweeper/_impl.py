"""``hydra_plugins.hydra_optuna_sweeper._impl``: upstream's helper functions and ``OptunaSweeperImpl``, by upstream's names."""

from typing import Any

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig

from ghm.sweep.optuna_sweeper import distribution_from_config, params_from_overrides, warn_search_space
from ghm.sweep.space import to_distribution
from hydra_plugins.ghm_sweeper.ghm_sweeper import OptunaSweeper

create_optuna_distribution_from_config = distribution_from_config
create_params_from_overrides = params_from_overrides


def create_optuna_distribution_from_override(override: Override) -> Any:
    """A sweep as its Optuna distribution, a fixed value as its override string (upstream's contract)."""
    return to_distribution(override) if override.is_sweep_override() else override.get_value_element_as_str()


class OptunaSweeperImpl(OptunaSweeper):
    """Upstream's constructor; the settings a sweep uses are read, typed, from ``hydra.sweeper`` in ``setup``."""

    def __init__(self, sampler: Any, direction: Any, storage: Any, study_name: str | None, n_trials: int, n_jobs: int,
                 max_failure_rate: float, search_space: DictConfig | None, custom_search_space: str | None,
                 params: DictConfig | None) -> None:
        super().__init__(sampler)
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.search_space, self.custom_search_space, self.params = search_space, custom_search_space, params

    def _process_searchspace_config(self) -> None:
        warn_search_space(self.params, self.search_space)
