"""hydra-optuna-sweeper's module paths, for code and tests written against that plugin (``hydra/sweeper: optuna``).

The sweeper itself is :class:`hydra_plugins.ghm_sweeper.ghm_sweeper.OptunaSweeper`
(:mod:`ghm.sweep.optuna_sweeper`); these modules only give its parts upstream's names. The
``hydra-optuna-sweeper`` distribution installs this same package: where it is installed too, a
warning says at import which one is active and how to choose (:mod:`ghm.sweep.drop_in`).
"""

from ghm.sweep.drop_in import announce

GHM_SWEEP_DROP_IN = True  # how ghm.sweep.drop_in tells this package from upstream's without importing either

announce()
