"""hydra-optuna-sweeper's module paths, for code and tests written against that plugin (``hydra/sweeper: optuna``).

The sweeper itself is :class:`hydra_plugins.ghm_sweeper.ghm_sweeper.OptunaSweeper`
(:mod:`ghm.sweep.optuna_sweeper`); these modules only give its parts upstream's names.
"""
