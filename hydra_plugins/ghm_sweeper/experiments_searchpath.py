"""Makes the top-level ``experiments/`` folder the ``experiments`` config group (``experiments=ghm_vs_focal``)."""


from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

PROJECT_DIR = Path(__file__).resolve().parents[2]


class ExperimentsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if (PROJECT_DIR / "experiments").is_dir():
            search_path.append(provider="ghm-experiments", path=f"file://{PROJECT_DIR}")
