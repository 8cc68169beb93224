"""The project installed as users install it: a real (non-editable) install, run from a folder of its own.

The fresh environment sees the project environment's third-party packages (a ``.pth`` line, so
torch and Ray are not installed again) but not the checkout: ``ghm`` and the sweeper plugin come
from the wheel, with the config tree inside it. A smoke sweep then runs from another folder and
writes only there.
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT, SMALL_DATA

pytestmark = pytest.mark.slow  # the README's default: the warm local Ray head (one of this environment's own)


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_an_installed_package_sweeps_from_another_folder(tmp_path: Path) -> None:
    env_dir, work = tmp_path / "env", tmp_path / "work"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site_packages = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        capture_output=True, text=True, check=True).stdout.strip())
    (site_packages / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", str(ROOT)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    package = site_packages / "ghm"
    assert (package / "conf" / "loss" / "cls" / "ghmc.yaml").is_file()
    assert (package / "conf" / "experiments" / "ghm_vs_focal.yaml").is_file()
    where = subprocess.run([python, "-c", "import ghm, hydra_plugins.ghm_sweeper as p; print(ghm.__file__, p.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in where and str(site_packages) in where  # the wheel, not the checkout
    installed, checkout = files_under(package), files_under(ROOT / "ghm")

    work.mkdir()
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "OPTUNA_STORAGE", "RAY_ADDRESS")}
    sweep = subprocess.run([python, "-m", "ghm", "-m", "loss=focal,ghm", "seed=0", "train=smoke", "train.figures=false", *SMALL_DATA,
                            "mlflow.experiment_name=installed"], cwd=work, env=environment, capture_output=True, text=True, timeout=900)
    assert sweep.returncode == 0, (sweep.stdout[-3000:], sweep.stderr[-5000:])
    assert "loss=ghm" in sweep.stdout and "95% t interval" in sweep.stdout
    assert {p.name for p in work.iterdir()} >= {"mlflow.db", "mlartifacts", "multirun", ".cache"}
    assert not {p.name for p in work.iterdir()} & {"ray_results", "optuna.db"}  # the sweeps' own state is in the user's cache
    assert len(list(work.glob("multirun/*/*/dashboard.html"))) == 1 and len(list(work.glob("multirun/*/*/[01]/.hydra/config.yaml"))) == 2
    assert files_under(package) == installed and files_under(ROOT / "ghm") == checkout  # nothing written beside the code
    tag = subprocess.run([python, "-c", "from ghm.tracking.version import code_version; print(code_version())"], cwd=work,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert tag.startswith("0.1.0+")  # an installed release: its version and a hash of its sources
