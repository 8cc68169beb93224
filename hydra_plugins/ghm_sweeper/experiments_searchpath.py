"""Makes the top-level ``experiments/`` folder of a checkout the ``experiments`` config group (``experiments=ghm_vs_focal``).

An installed package carries the experiments inside its config tree (``ghm/conf/experiments``) and needs no search path.
"""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

CHECKOUT_DIR = Path(__file__).resolve().parents[2]  # in a checkout, the folder holding hydra_plugins/ and experiments/


class ExperimentsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if (CHECKOUT_DIR / "experiments").is_dir():
            search_path.append(provider="ghm-experiments", path=f"file://{CHECKOUT_DIR}")
