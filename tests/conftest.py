"""Shared helpers: compose the project's Hydra config as launch.py does, on small data."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ghm.config import register

ROOT = Path(__file__).resolve().parents[1]
register()

# A Digits-Det small enough for tests (generated once into the project's cache, then reused).
SMALL_DATA = ["data.train_images=24", "data.val_images=12", "data.image_size=96", "data.max_digit_size=40"]


def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
