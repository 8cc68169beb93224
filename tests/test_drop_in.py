"""The drop-in ``hydra_plugins.hydra_optuna_sweeper`` beside an installed ``hydra-optuna-sweeper`` (simulated on sys.path).

Each case runs in a fresh interpreter whose ``PYTHONPATH`` puts a fake installation first: the
distribution's metadata alone (its files replaced by the drop-in's), or with its own package
``hydra_plugins/hydra_optuna_sweeper`` (upstream's files win). No real install is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROBE = """
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import hydra_plugins.ghm_sweeper.ghm_sweeper
    import hydra_plugins.hydra_optuna_sweeper as package
from hydra.core.config_store import ConfigStore
from ghm.sweep.drop_in import optuna_sweeper_choice
options = ConfigStore.instance().repo["hydra"]["sweeper"]
print(json.dumps({"warnings": [f"{w.category.__name__}: {w.message}" for w in caught], "package": package.__file__,
                  "registered": options["optuna.yaml"].provider if "optuna.yaml" in options else None,
                  "drop_in_active": optuna_sweeper_choice().drop_in_active}))
"""


def probe(first_on_path: Path | None, cwd: Path) -> dict:
    """Import the plugins in a fresh interpreter (in ``cwd``, not the checkout: ``-c`` puts the working directory first)."""
    path = os.pathsep.join(p for p in (str(first_on_path) if first_on_path else "", str(ROOT)) if p)
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env={**os.environ, "PYTHONPATH": path}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def fake_upstream(root: Path, with_package: bool) -> Path:
    info = root / "hydra_optuna_sweeper-1.3.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hydra-optuna-sweeper\nVersion: 1.3.0\n")
    if with_package:  # upstream's own __init__.py: a version, no marker
        package = root / "hydra_plugins" / "hydra_optuna_sweeper"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text('__version__ = "1.3.0"\n')
    return root


def test_without_upstream_the_drop_in_is_active_and_silent(tmp_path: Path) -> None:
    found = probe(None, tmp_path)
    assert found["warnings"] == [] and found["drop_in_active"] and found["registered"] == "ghm_sweeper"
    assert Path(found["package"]).parent == ROOT / "hydra_plugins" / "hydra_optuna_sweeper"


def test_upstream_installed_under_the_drop_in_is_named_with_how_to_choose(tmp_path: Path) -> None:
    found = probe(fake_upstream(tmp_path / "site", with_package=False), tmp_path)
    [warning] = found["warnings"]
    assert warning.startswith("OptunaSweeperConflict: hydra/sweeper=optuna is ghm-sweep's drop-in")
    assert "not the installed hydra-optuna-sweeper 1.3.0" in warning
    assert "pip install --force-reinstall --no-deps hydra-optuna-sweeper==1.3.0" in warning
    assert "pip uninstall hydra-optuna-sweeper" in warning
    assert found["drop_in_active"] and found["registered"] == "ghm_sweeper"


def test_upstreams_package_first_on_the_path_is_active_and_keeps_hydra_sweeper_optuna(tmp_path: Path) -> None:
    site = fake_upstream(tmp_path / "site", with_package=True)
    found = probe(site, tmp_path)
    assert Path(found["package"]) == site / "hydra_plugins" / "hydra_optuna_sweeper" / "__init__.py"
    [warning] = found["warnings"]
    assert warning.startswith("OptunaSweeperConflict: hydra/sweeper=optuna is the installed hydra-optuna-sweeper 1.3.0")
    assert str(site / "hydra_plugins" / "hydra_optuna_sweeper") in warning and "hydra/sweeper=ghm is unaffected" in warning
    assert not found["drop_in_active"] and found["registered"] is None  # left to upstream's own config


@pytest.mark.parametrize("readme_line", ["hydra-optuna-sweeper` is installed too", "pip uninstall hydra-optuna-sweeper"])
def test_the_readme_says_which_is_active_and_how_to_choose(readme_line: str) -> None:
    assert readme_line in (ROOT / "README.md").read_text()
