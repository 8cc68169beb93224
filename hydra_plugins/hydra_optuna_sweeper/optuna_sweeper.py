"""``hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper``: the project's implementation of it."""

from hydra_plugins.ghm_sweeper.ghm_sweeper import OptunaSweeper

__all__ = ["OptunaSweeper"]
