"""Which ``hydra/sweeper: optuna`` is active: this project's drop-in, or an installed ``hydra-optuna-sweeper``.

The drop-in (``hydra_plugins/hydra_optuna_sweeper``, over :mod:`ghm.sweep.optuna_sweeper`) has the
module path of the ``hydra-optuna-sweeper`` distribution, so that code and tests written against
that plugin import it unchanged. With both installed they share one folder: whichever was installed
last owns its files, and uninstalling either removes them for both. Python imports whichever
``hydra_plugins/hydra_optuna_sweeper`` comes first on ``sys.path``; :func:`optuna_sweeper_choice`
finds out which one that is (without importing it: the upstream release may not import beside
Optuna 5), and :func:`announce` says so once per process, with how to choose, whenever the upstream
distribution is installed. With upstream's package active, ``hydra/sweeper: optuna`` is left to
its own config (``hydra_plugins.ghm_sweeper`` does not register the drop-in's); ``hydra/sweeper: ghm``
is the project's either way.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "hydra-optuna-sweeper"
PACKAGE = "hydra_plugins.hydra_optuna_sweeper"
MARKER = "GHM_SWEEP_DROP_IN"  # defined by the drop-in's __init__.py alone


class OptunaSweeperConflict(UserWarning):
    """The upstream hydra-optuna-sweeper is installed beside the drop-in: which one runs, and how to choose."""


@dataclass(frozen=True)
class OptunaSweeperChoice:
    """The installed upstream release (if any), where ``hydra_plugins.hydra_optuna_sweeper`` imports from, and whose it is."""

    upstream_version: str | None
    location: Path | None
    drop_in_active: bool

    def message(self) -> str | None:
        """What a user must know when upstream is installed (None when it is not: the drop-in runs, nothing to choose)."""
        if self.upstream_version is None:
            return None
        both = (f"{DISTRIBUTION} {self.upstream_version} and ghm-sweep both provide {PACKAGE} (one folder: the last installed owns "
                "its files, and uninstalling either removes them for both)")
        reinstall = "pip install --force-reinstall --no-deps ghm-sweep (a checkout: make .venv/.installed)"
        if self.drop_in_active:
            return (f"hydra/sweeper=optuna is ghm-sweep's drop-in ({self.location}), not the installed {DISTRIBUTION} "
                    f"{self.upstream_version}: {both}. To run {DISTRIBUTION}'s instead: pip install --force-reinstall --no-deps "
                    f"{DISTRIBUTION}=={self.upstream_version}. To keep the drop-in: pip uninstall {DISTRIBUTION}, then {reinstall}.")
        return (f"hydra/sweeper=optuna is the installed {DISTRIBUTION} {self.upstream_version} ({self.location}), not ghm-sweep's "
                f"drop-in: {both}. hydra/sweeper=ghm is unaffected. To run the drop-in instead: pip uninstall {DISTRIBUTION}, "
                f"then {reinstall}.")


def optuna_sweeper_choice() -> OptunaSweeperChoice:
    """Look at the installed distributions and at the package Python would import (its source, not its code)."""
    try:
        upstream = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        upstream = None
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    location = Path(spec.origin) if spec is not None and spec.origin else None
    drop_in = location is not None and location.is_file() and MARKER in location.read_text(encoding="utf-8", errors="replace")
    return OptunaSweeperChoice(upstream, location.parent if location else None, drop_in)


@functools.cache
def announce() -> OptunaSweeperChoice:
    """The choice, said once per process (a warning) when the upstream distribution is installed."""
    choice = optuna_sweeper_choice()
    message = choice.message()
    if message:
        warnings.warn(message, OptunaSweeperConflict, stacklevel=2)
    return choice
