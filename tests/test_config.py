"""Config validation: every bad key, type or value fails before any work, naming the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from ghm.config import ConfigError, DigitsDataConfig, validate
from tests.conftest import ROOT, compose_config


def test_defaults_are_valid() -> None:
    run = validate(compose_config(["checkpoint_dir=/tmp/x"]))
    assert run.loss.family == "ghm" and run.loss.cls["bins"] == 30 and run.loss.reg["momentum"] == 0.7
    assert run.model.name == "retinanet_tiny" and isinstance(run.data, DigitsDataConfig) and run.train.epochs >= 1


@pytest.mark.parametrize("loss", ["ghm", "focal", "ce_sl1", "ghmc_sl1", "ghmc_asl1", "fl_asl1", "fl_ghmr"])
def test_every_loss_pair_is_valid(loss: str) -> None:
    run = validate(compose_config([f"loss={loss}", "checkpoint_dir=/tmp/x"]))
    assert run.loss.family == loss and run.loss.baseline == (loss == "focal")


@pytest.mark.parametrize("group", ["model=retinanet_r50_fpn", "train=smoke", "train=coco_1x", "data=coco data.root=/data/coco"])
def test_other_group_options_are_valid(group: str) -> None:
    validate(compose_config([*group.split(), "checkpoint_dir=/tmp/x"]))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.epochs=abc", "train.epochs"),
        ("model.per_level=maybe", "model.per_level"),
        ("train.lr=fast", "train.lr"),
    ],
)
def test_wrong_types_fail_at_composition(override: str, match: str) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError), match=match):
        compose_config([override])


@pytest.mark.parametrize("override", ["train.optimizer=adam", "model.depth=50", "data.colour=red", "loss.cls.gamma=2"])
def test_unknown_keys_fail_at_composition(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises((ConfigCompositionException, ConfigKeyError), match=key.split(".")[-1]):
        compose_config([override])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epochs=0"], "train.epochs must be an integer >= 1, got 0"),
        (["train.momentum=1.0"], "train.momentum must be in [0, 1), got 1.0"),
        (["train.schedule=linear"], "train.schedule must be one of step, cosine, got 'linear'"),
        (["train.nonfinite=ignore"], "train.nonfinite must be one of fail, skip"),
        (["train.epochs=5", "train.lr_steps=[8,11]"], "train.lr_steps must be epochs in [1, 5]"),
        (["train.clip_grad_norm=-1"], "train.clip_grad_norm must be > 0 or null"),
        (["model.name=yolo"], "model.name must be one of retinanet_tiny, retinanet_r50_fpn, got 'yolo'"),
        (["model.min_size=256", "model.max_size=128"], "model.max_size must be >= model.min_size (256)"),
        (["model.anchor_sizes=[]"], "model.anchor_sizes must be a non-empty list"),
        (["data.min_contrast=2.0"], "data.min_contrast must be in (0, 1]"),
        (["data.max_digit_size=500"], "data.max_digit_size must be between"),
        (["device=tpu"], "device must be auto, cpu, cuda or cuda:N"),
        (["loss.cls.bins=0"], "loss.cls: bins must be an integer >= 1, got 0"),
        (["loss.cls.momentum=1.0"], "loss.cls: momentum must be a number with 0 <= momentum < 1"),
        (["loss.reg.mu=0"], "loss.reg: mu must be a number in (0.0, inf]"),
        (["loss.cls.name=ghmr"], "loss.cls: unknown classification loss 'ghmr'; allowed: bce, focal, ghmc"),
        (["+loss.reg.gamma=2"], "loss.reg: regression loss 'ghmr' has no setting 'gamma'"),
    ],
)
def test_out_of_range_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose_config([*overrides, "checkpoint_dir=/tmp/x"]))


def test_coco_needs_a_root() -> None:
    with pytest.raises(Exception, match="root"):
        validate(compose_config(["data=coco", "checkpoint_dir=/tmp/x"]))


def test_launch_reports_a_config_error_before_work(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "launch.py", "train.epochs=0", f"hydra.run.dir={tmp_path}",
                             f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "config error: train.epochs must be an integer >= 1, got 0" in result.stdout + result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "checkpoints").exists()
