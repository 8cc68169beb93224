"""Shared helpers: compose the project's Hydra config as launch.py does, on small data, and build a job from it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from ghm.comparison.pairing import Pairing
from ghm.config import register, validate
from ghm.run import Job, Processes, build_job

ROOT = Path(__file__).resolve().parents[1]
register()

# A Digits-Det and a backbone pretraining small enough for tests (made once into the checkout's cache, then reused).
SMALL_DATA = ["data.train_images=24", "data.val_images=12", "data.image_size=96", "data.max_digit_size=40", "pretrain.images=20",
              "pretrain.epochs=1"]
# What Hydra's runtime gives launch.py's paths: the checkout as launching directory (its .cache), a scratch output dir.
PATHS = [f"paths.root_dir={ROOT}", f"paths.output_dir={Path(tempfile.gettempdir()) / 'ghm-tests'}"]


def compose_full(overrides: list[str]) -> DictConfig:
    """The composed config with its ``hydra`` node (the sweeper's settings, the group choices)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*PATHS, *overrides], return_hydra_config=True)


def compose_config(overrides: list[str]) -> DictConfig:
    """The task's config, as launch.py's main receives it."""
    config = compose_full(overrides)
    with open_dict(config):
        del config["hydra"]
    return config


def build_test_job(overrides: list[str], processes: Processes | None = None) -> Job:
    """A job built as launch.py builds it: the sweeper's pairing declaration and Hydra's choices decide its tags."""
    full = compose_full(overrides)
    pairing, choices = Pairing.from_sweeper(full.hydra.sweeper), dict(full.hydra.runtime.choices)
    with open_dict(full):
        del full["hydra"]
    return build_job(validate(full), pairing, choices, processes or Processes())


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
