"""Config validation: every bad key, type or value fails before any work, naming the key."""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from hydra.utils import get_object
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, ValidationError

from ghm.comparison.pairing import Pairing
from ghm.config import ConfigError, DigitsDataConfig, ModelConfig, instantiate_labelled, validate
from tests.conftest import ROOT, compose_config, compose_full


def test_defaults_are_valid() -> None:
    run = validate(compose_config(["checkpoint_dir=/tmp/x"]))
    assert run.loss.family == "ghm" and run.loss.cls.bins == 30 and run.loss.reg.momentum == 0.7
    assert run.model.name == "retinanet_tiny" and isinstance(run.data, DigitsDataConfig) and run.train.epochs >= 1


PRESETS = {"ghm": ("ghmc", "ghmr"), "focal": ("focal", "smooth_l1"), "ce_sl1": ("bce", "smooth_l1"), "ghmc_sl1": ("ghmc", "smooth_l1"),
           "ghmc_asl1": ("ghmc", "asl1"), "fl_asl1": ("focal", "asl1"), "fl_ghmr": ("focal", "ghmr")}


@pytest.mark.parametrize("loss", sorted(PRESETS))
def test_every_loss_preset_composes_one_file_of_each_group(loss: str) -> None:
    run = validate(compose_config([f"loss={loss}", "checkpoint_dir=/tmp/x"]))
    assert run.loss.family == loss and (run.loss.cls.name, run.loss.reg.name) == PRESETS[loss]
    preset = (ROOT / "conf" / "loss" / f"{loss}.yaml").read_text()
    assert f"cls: {PRESETS[loss][0]}" in preset and f"reg: {PRESETS[loss][1]}" in preset


def test_presets_keep_their_keys_overridable() -> None:
    run = validate(compose_config(["loss=ghmc_sl1", "loss.cls.bins=20", "loss/reg=asl1", "loss.reg.mu=0.05", "checkpoint_dir=/tmp/x"]))
    assert (run.loss.cls.bins, run.loss.reg.name, run.loss.reg.mu, run.loss.family) == (20, "asl1", 0.05, "ghmc_sl1")


@pytest.mark.parametrize("group", ["model=retinanet_r50_fpn pretrain=none", "model=retinanet_r101_fpn pretrain=none", "train=smoke",
                                   "train=coco_1x", "data=coco data.root=/data/coco pretrain=none", "pretrain=none", "data=digits_hard"])
def test_other_group_options_are_valid(group: str) -> None:
    validate(compose_config([*group.split(), "checkpoint_dir=/tmp/x"]))


def test_the_papers_protocol_takes_a_local_checkpoint(tmp_path) -> None:
    (tmp_path / "resnet50.pth").write_bytes(b"")
    run = validate(compose_config(["model=retinanet_r50_fpn", "pretrain=imagenet", f"pretrain.weights={tmp_path / 'resnet50.pth'}",
                                   "train=coco_1x", "checkpoint_dir=/tmp/x"]))
    assert (run.pretrain.frozen_stages, run.pretrain.norm_eval, run.model.backbone) == (1, True, "resnet50")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ("model=retinanet_r50_fpn", r"pretrain must be imagenet \(with pretrain.weights\) or none unless data=digits and the tiny"),
        ("data=coco data.root=/data/coco", "pretrain must be imagenet"),
        ("model=retinanet_r50_fpn pretrain=imagenet pretrain.weights=/no/such/file.pth", "pretrain.weights must be an existing"),
        ("pretrain=none pretrain.norm_eval=true", r"pretrain.frozen_stages/norm_eval must be -1/false when training from scratch"),
        ("pretrain.frozen_stages=5", r"pretrain.frozen_stages must be in \[-1, 4\]"),
        ("model.backbone=resnet50", "model.backbone must be tiny for retinanet_tiny"),
    ],
)
def test_backbone_start_errors_name_the_key(overrides: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate(compose_config([*overrides.split(), "checkpoint_dir=/tmp/x"]))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.epochs=abc", "train.epochs"),
        ("model.ghm_group_images=two", "model.ghm_group_images"),
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
        (["model.name=yolo"], "model.name must be one of retinanet_tiny, retinanet_r50_fpn, retinanet_r101_fpn, got 'yolo'"),
        (["model.min_size=256", "model.max_size=128"], "model.max_size must be >= model.min_size (256)"),
        (["model.anchor_sizes=[]"], "model.anchor_sizes must be a non-empty list"),
        (["model.ghm_scope=per_gpu"], "model.ghm_scope must be one of official, per_level, whole_batch, got 'per_gpu'"),
        (["model.ghm_group_images=3"], "train.batch_size must be a multiple of model.ghm_group_images (3: model.ghm_scope=official"),
        (["data.min_contrast=2.0"], "data.min_contrast must be in (0, 1]"),
        (["data.max_digit_size=500"], "data.max_digit_size must be between"),
        (["device=tpu"], "device must be auto, cpu, cuda or cuda:N"),
        (["loss.cls.bins=0"], "loss.cls: bins must be an integer >= 1, got 0"),
        (["loss.cls.momentum=1.0"], "loss.cls: momentum must be a number with 0 <= momentum < 1"),
        (["loss.reg.mu=0"], "loss.reg: mu must be a number in (0.0, inf]"),
        (["loss.cls.name=ghmr"], "loss.cls.name must be 'ghmc', the label of its config (another classification loss is chosen "
                                  "with loss/cls=<bce|focal|ghmc>), got 'ghmr'"),
        (["+loss.reg.gamma=2"], "loss.reg: ghmr has no setting 'gamma'; allowed: bins, ema_start, loss_weight, momentum, mu"),
    ],
)
def test_out_of_range_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose_config([*overrides, "checkpoint_dir=/tmp/x"]))


def test_coco_needs_a_root() -> None:
    with pytest.raises(Exception, match="root"):
        validate(compose_config(["data=coco", "checkpoint_dir=/tmp/x"]))


@pytest.mark.slow
def test_launch_reports_a_config_error_before_work(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "launch.py", "train.epochs=0", f"hydra.run.dir={tmp_path}",
                             f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "config error: train.epochs must be an integer >= 1, got 0" in result.stdout + result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "checkpoints").exists()


# Where a config file's value differs from its class's own default on purpose: the recipe the file stands for.
RECIPE_CHOICES = {
    ("loss/cls/ghmc", "momentum"): "the released configs' EMA of the region counts (GHMC alone has none)",
    ("loss/reg/ghmr", "momentum"): "the released configs' EMA of the region counts (GHMR alone has none)",
    ("loss/reg/ghmr", "loss_weight"): "the released configs' weight of the box loss",
    ("model/retinanet_r50_fpn", "anchor_sizes"): "the paper's anchors for 800 px COCO images",
    ("model/retinanet_r50_fpn", "min_size"): "the paper's input size",
    ("model/retinanet_r50_fpn", "max_size"): "the paper's input size",
    ("model/retinanet_r50_fpn", "backbone"): "the paper's ResNet-50",
    ("model/retinanet_r50_fpn", "head_convs"): "RetinaNet's head",
    ("model/retinanet_r101_fpn", "backbone"): "the paper's ResNet-101",
}


def config_defaults(target: str) -> dict[str, object]:
    """The defaults of the callable a config's ``_target_`` names."""
    return {name: p.default for name, p in inspect.signature(get_object(target)).parameters.items()
            if p.default is not inspect.Parameter.empty}


def group_files() -> list[tuple[str, Path]]:
    return sorted((path.relative_to(ROOT / "conf").with_suffix("").as_posix(), path)
                  for group in ("loss/cls", "loss/reg", "model") for path in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize(("option", "path"), group_files())
def test_config_files_agree_with_their_classes_defaults_or_document_the_recipe(option: str, path: Path) -> None:
    group, name = option.rsplit("/", 1)
    node = OmegaConf.select(compose_config([f"{group}={name}", "checkpoint_dir=/tmp/x"]), group.replace("/", "."))
    defaults = config_defaults(node._target_)
    lines = {line.split(":", 1)[0]: line for line in path.read_text().splitlines()}
    for key, value in yaml.safe_load(path.read_text()).items():
        if key == "defaults" or key not in defaults:
            continue
        default = list(defaults[key]) if isinstance(defaults[key], tuple) else defaults[key]
        documented = (option, key) in RECIPE_CHOICES
        assert (value != default) == documented, f"{path}: {key}={value}, {node._target_} says {default}"
        assert ("# recipe:" in lines[key]) == documented, f"{path}: say why {key} differs, on its line (# recipe: ...)"


def test_the_model_schema_keeps_the_builders_defaults() -> None:
    schema = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory() for f in dataclasses.fields(ModelConfig)}
    from_pretrain_group = {"backbone_weights", "frozen_stages", "norm_eval", "images_per_step"}  # given by ghm.run.build_model
    for key, default in config_defaults(ModelConfig._target_).items():
        if key in from_pretrain_group:
            continue
        assert schema[key] == (list(default) if isinstance(default, tuple) else default), key


def test_each_loss_file_builds_its_class_with_its_values() -> None:
    for option, path in group_files():
        group, name = option.rsplit("/", 1)
        if not group.startswith("loss"):
            continue
        node = compose_config([f"{group}={name}", "checkpoint_dir=/tmp/x"]).loss[group.split("/")[1]]
        loss = instantiate_labelled(node)
        assert type(loss).__name__ == node._target_.rsplit(".", 1)[1] and node.name == name
        for key, value in yaml.safe_load(path.read_text()).items():
            if key in ("bins",):
                assert loss.density.bins == value
            elif key in ("mu", "loss_weight", "alpha", "gamma", "beta"):
                assert getattr(loss, key) == pytest.approx(value), (option, key)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml")))
def test_every_experiment_composes_and_sweeps_keys_its_task_has(experiment: str) -> None:
    full = compose_full([f"experiments={experiment}", "checkpoint_dir=/tmp/x"])
    pairing = Pairing.from_sweeper(full.hydra.sweeper)
    choices = dict(full.hydra.runtime.choices)
    for key in [*full.hydra.sweeper.params, *([pairing.baseline_key] if pairing.baseline_key else [])]:
        assert key in choices or OmegaConf.select(full, key, default=None) is not None, f"{experiment}: {key}"
    with open_dict(full):
        del full["hydra"]
    validate(full)
