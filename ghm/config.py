"""Typed schemas of the Hydra config and their validation, run before any work starts.

Hydra merges every config file onto these dataclasses (each file names its schema in its defaults
list), so an unknown key or a wrong type fails at composition time with the key's full name.
Objects are built from their node with ``_target_`` (:func:`instantiate_labelled`): the schemas
hold the types and targets, the YAML files the values, the classes their own defaults
(``tests/test_config.py`` checks that the two agree, or that a difference is a recipe choice).
Value ranges are checked by :func:`validate`, which names the key and what is allowed; the loss
settings are checked by building the losses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, OmegaConf

from ghm.data.digits_det import DigitsDetParams
from ghm.detection.backbones import RESNETS
from ghm.detection.model import GHM_SCOPES
from ghm.detection.pretraining import PretrainingParams


class ConfigError(ValueError):
    """A config value that is out of range or inconsistent, with the key and what is allowed."""


def _require(ok: bool, key: str, allowed: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, key, f"one of {', '.join(allowed)}", value)


@dataclass
class LossModuleConfig:
    """One loss: ``_target_`` is its class, ``name`` the label tracking and the sweeps use (``loss.cls.name``)."""

    _target_: str = MISSING
    name: str = MISSING
    loss_weight: float = MISSING


@dataclass
class ClassificationLossConfig(LossModuleConfig):
    """A loss on logits ``[N, C]`` against one-hot targets (``conf/loss/cls/``)."""


@dataclass
class RegressionLossConfig(LossModuleConfig):
    """A loss on box deltas ``[N, 4]`` against target deltas (``conf/loss/reg/``)."""


@dataclass
class GHMCConfig(ClassificationLossConfig):
    _target_: str = "ghm.losses.GHMC"
    name: str = "ghmc"
    bins: int = MISSING
    momentum: float = MISSING
    density: str = MISSING
    ema_start: str = MISSING


@dataclass
class FocalLossConfig(ClassificationLossConfig):
    _target_: str = "ghm.losses.FocalLoss"
    name: str = "focal"
    alpha: float = MISSING
    gamma: float = MISSING


@dataclass
class BCELossConfig(ClassificationLossConfig):
    _target_: str = "ghm.losses.BCELoss"
    name: str = "bce"


@dataclass
class GHMRConfig(RegressionLossConfig):
    _target_: str = "ghm.losses.GHMR"
    name: str = "ghmr"
    mu: float = MISSING
    bins: int = MISSING
    momentum: float = MISSING
    ema_start: str = MISSING


@dataclass
class SmoothL1LossConfig(RegressionLossConfig):
    _target_: str = "ghm.losses.SmoothL1Loss"
    name: str = "smooth_l1"
    beta: float = MISSING


@dataclass
class ASL1LossConfig(RegressionLossConfig):
    _target_: str = "ghm.losses.ASL1Loss"
    name: str = "asl1"
    mu: float = MISSING


CLASSIFICATION_LOSSES = (GHMCConfig, FocalLossConfig, BCELossConfig)  # conf/loss/cls/<name>.yaml
REGRESSION_LOSSES = (GHMRConfig, SmoothL1LossConfig, ASL1LossConfig)  # conf/loss/reg/<name>.yaml


@dataclass
class LossConfig:
    """A classification and a regression loss (``loss=<preset>`` composes one of each), and what the pair is called."""

    family: str = MISSING  # what the tracking and the sweeps call this pair, e.g. "ghm" or "focal"
    cls: Any = MISSING  # a ClassificationLossConfig, by the choice of loss/cls
    reg: Any = MISSING  # a RegressionLossConfig, by the choice of loss/reg


@dataclass
class ModelConfig:
    """The detector; the defaults are those of :func:`ghm.detection.model.build_detector` (``retinanet_tiny``)."""

    _target_: str = "ghm.detection.model.build_detector"
    name: str = "retinanet_tiny"  # what the tracking calls the model (tag ``model``)
    backbone: str = "tiny"  # tiny, or a torchvision ResNet (resnet50, resnet101, ...)
    width: int = 32  # retinanet_tiny: channels of the first stage
    fpn_channels: int = 64  # retinanet_tiny
    anchor_sizes: list[int] = field(default_factory=lambda: [12, 24, 48, 96])  # one base size per level
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    head_convs: int = 2  # convolutions per head branch (retinanet_tiny; RetinaNet's is 4)
    min_size: int = 128
    max_size: int = 128
    ghm_scope: str = "official"  # which examples share one GHM density: official | per_level | whole_batch (ghm.detection.model)
    ghm_group_images: int = 2  # official: images per density estimate, one GPU's of the paper's 8 x 2
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    weights: str | None = None

    def validate(self) -> None:
        _choice("model.name", self.name, ("retinanet_tiny", "retinanet_r50_fpn", "retinanet_r101_fpn"))
        _choice("model.backbone", self.backbone, ("tiny", *RESNETS))
        _choice("model.ghm_scope", self.ghm_scope, GHM_SCOPES)
        _require((self.backbone == "tiny") == (self.name == "retinanet_tiny"), "model.backbone",
                 "tiny for retinanet_tiny and a ResNet for the others", f"{self.backbone} with model.name={self.name}")
        for key in ("width", "fpn_channels", "min_size", "max_size", "detections_per_img", "ghm_group_images"):
            _require(getattr(self, key) >= 1, f"model.{key}", "an integer >= 1", getattr(self, key))
        _require(1 <= self.head_convs <= 4, "model.head_convs", "in [1, 4]", self.head_convs)
        _require(self.max_size >= self.min_size, "model.max_size", f">= model.min_size ({self.min_size})", self.max_size)
        _require(len(self.anchor_sizes) > 0 and all(s > 0 for s in self.anchor_sizes), "model.anchor_sizes",
                 "a non-empty list of positive sizes", self.anchor_sizes)
        _require(len(self.aspect_ratios) > 0 and all(r > 0 for r in self.aspect_ratios), "model.aspect_ratios",
                 "a non-empty list of positive ratios", self.aspect_ratios)
        for key in ("score_thresh", "nms_thresh"):
            _require(0.0 <= getattr(self, key) <= 1.0, f"model.{key}", "in [0, 1]", getattr(self, key))


@dataclass
class DigitsDataConfig(DigitsDetParams):
    """The built-in Digits-Det generator: its parameters (see :mod:`ghm.data.digits_det`) and where it is cached."""

    _target_: str = "ghm.data.digits_det.digits_det_dataset"
    name: str = "digits"
    cache_dir: str = MISSING  # generated once per parameter set into <cache_dir>/<key>
    hflip: bool = False  # mirrored digits are other glyphs

    def validate(self) -> None:
        for key in ("image_size", "train_images", "val_images", "min_objects", "min_digit_size"):
            _require(getattr(self, key) >= 1, f"data.{key}", "an integer >= 1", getattr(self, key))
        _require(self.max_objects >= self.min_objects, "data.max_objects", f">= data.min_objects ({self.min_objects})",
                 self.max_objects)
        _require(self.min_digit_size <= self.max_digit_size <= self.image_size, "data.max_digit_size",
                 f"between data.min_digit_size ({self.min_digit_size}) and data.image_size ({self.image_size})",
                 self.max_digit_size)
        _require(0.0 < self.min_contrast <= 1.0, "data.min_contrast", "in (0, 1]", self.min_contrast)
        _require(0.0 <= self.occlusion_prob <= 1.0, "data.occlusion_prob", "in [0, 1]", self.occlusion_prob)
        _require(self.class_tail >= 0 and self.noise_std >= 0 and self.max_distractors >= 0, "data.class_tail/noise_std/max_distractors",
                 ">= 0", (self.class_tail, self.noise_std, self.max_distractors))
        _require(0.0 <= self.unlabelled_fraction < 1.0, "data.unlabelled_fraction", "in [0, 1)", self.unlabelled_fraction)
        _require(self.lookalikes >= 0, "data.lookalikes", "an integer >= 0", self.lookalikes)


@dataclass
class PretrainConfig:
    """How the backbone starts: from scratch (``pretrain=none``), trainable BatchNorm, nothing frozen."""

    name: str = "none"
    frozen_stages: int = -1  # mmdetection's meaning: -1 none, 0 the stem, k the stem and layer1..layer k
    norm_eval: bool = False  # frozen BatchNorm (statistics and affine parameters)

    def validate(self) -> None:
        _require(-1 <= self.frozen_stages <= 4, "pretrain.frozen_stages", "in [-1, 4]", self.frozen_stages)
        if self.name == "none":
            _require(self.frozen_stages == -1 and not self.norm_eval, "pretrain.frozen_stages/norm_eval",
                     "-1/false when training from scratch (frozen random weights, or BatchNorm frozen at identity statistics, "
                     "would never learn)", (self.frozen_stages, self.norm_eval))


@dataclass
class CheckpointPretrainConfig(PretrainConfig):
    """A local torchvision-format classification checkpoint (e.g. ImageNet ResNet-50): the paper's protocol."""

    name: str = "imagenet"
    weights: str = MISSING
    frozen_stages: int = 1
    norm_eval: bool = True

    def validate(self) -> None:
        super().validate()
        _require(Path(self.weights).is_file(), "pretrain.weights", "an existing checkpoint file", self.weights)


@dataclass
class DigitsPretrainConfig(PretrainConfig, PretrainingParams):
    """The embedded stage: the tiny backbone trained on Digits-Det crops (:mod:`ghm.detection.pretraining`), cached."""

    name: str = "digits"
    cache_dir: str = MISSING  # trained once per parameter set into <cache_dir>/<key>
    frozen_stages: int = 1  # as the paper's recipe (mmdetection's RetinaNet): the stem and layer1 frozen

    def validate(self) -> None:
        super().validate()
        for key in ("images", "crop_size", "epochs", "batch_size", "backgrounds_per_image"):
            _require(getattr(self, key) >= 1, f"pretrain.{key}", "an integer >= 1", getattr(self, key))
        _require(0.0 < self.holdout_fraction < 1.0, "pretrain.holdout_fraction", "in (0, 1)", self.holdout_fraction)
        for key in ("lr", "context"):
            _require(getattr(self, key) > 0, f"pretrain.{key}", "> 0", getattr(self, key))
        _require(self.weight_decay >= 0, "pretrain.weight_decay", ">= 0", self.weight_decay)


@dataclass
class CocoDataConfig:
    """Any COCO-format dataset; the defaults are COCO 2017's layout under ``root``."""

    _target_: str = "ghm.data.coco.coco_dataset"
    name: str = "coco"
    root: str = MISSING
    train_annotations: str = "annotations/instances_train2017.json"
    train_images: str = "train2017"
    val_annotations: str = "annotations/instances_val2017.json"
    val_images: str = "val2017"
    hflip: bool = True

    def validate(self) -> None:
        _require(bool(self.root), "data.root", "the dataset's directory", self.root)


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 8
    lr: float = 0.01  # at lr_reference_batch images per step; scaled linearly with the real batch
    lr_reference_batch: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    schedule: str = "step"  # step | cosine
    lr_steps: list[int] = field(default_factory=lambda: [8, 11])  # epochs after which lr *= lr_gamma
    lr_gamma: float = 0.1
    clip_grad_norm: float | None = 35.0
    amp: bool = True  # on CUDA only
    nonfinite: str = "fail"  # fail | skip
    max_iters_per_epoch: int | None = None
    eval_every: int = 1
    num_workers: int = 0
    threads: int | None = None  # torch CPU threads; null: torch's default
    figures: bool = True
    resume: bool = True
    ghm_state_warmup: int = 0  # batches through the starting detector (no update) that fill GHM's EMA of counts: a warm start

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "lr_reference_batch", "eval_every"):
            _require(getattr(self, key) >= 1, f"train.{key}", "an integer >= 1", getattr(self, key))
        _require(self.lr > 0, "train.lr", "> 0", self.lr)
        _require(0.0 <= self.momentum < 1.0, "train.momentum", "in [0, 1)", self.momentum)
        _require(self.weight_decay >= 0, "train.weight_decay", ">= 0", self.weight_decay)
        _require(self.warmup_iters >= 0, "train.warmup_iters", ">= 0", self.warmup_iters)
        _require(0.0 < self.warmup_ratio <= 1.0, "train.warmup_ratio", "in (0, 1]", self.warmup_ratio)
        _choice("train.schedule", self.schedule, ("step", "cosine"))
        _require(all(1 <= s <= self.epochs for s in self.lr_steps), "train.lr_steps", f"epochs in [1, {self.epochs}]",
                 self.lr_steps)
        _require(0.0 < self.lr_gamma <= 1.0, "train.lr_gamma", "in (0, 1]", self.lr_gamma)
        _require(self.clip_grad_norm is None or self.clip_grad_norm > 0, "train.clip_grad_norm", "> 0 or null",
                 self.clip_grad_norm)
        _choice("train.nonfinite", self.nonfinite, ("fail", "skip"))
        _require(self.max_iters_per_epoch is None or self.max_iters_per_epoch >= 1, "train.max_iters_per_epoch",
                 ">= 1 or null", self.max_iters_per_epoch)
        _require(self.num_workers >= 0, "train.num_workers", ">= 0", self.num_workers)
        _require(self.threads is None or self.threads >= 1, "train.threads", ">= 1 or null", self.threads)
        _require(self.ghm_state_warmup >= 0, "train.ghm_state_warmup", "an integer >= 0", self.ghm_state_warmup)


@dataclass
class PathsConfig:
    """Where a run reads and writes (``conf/paths/default.yaml``); nothing is written beside the code."""

    root_dir: str = MISSING  # the launching working directory: relative paths mean what they mean on the command line
    cache_dir: str = MISSING  # generated datasets
    output_dir: str = MISSING  # this job's output directory (Hydra's)


@dataclass
class MlflowConfig:
    tracking_uri: str | None = None  # null: MLFLOW_TRACKING_URI, else the embedded SQLite store mlflow.db in paths.root_dir
    experiment_name: str = "ghm"
    run_name: str | None = None
    log_model: bool = True  # the trained detector as an MLflow logged model (a pyfunc), linked to the run and its final metrics
    system_metrics: bool = True  # MLflow's system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) on the run
    system_metrics_interval: float = 10.0  # seconds between two samples of the system metrics

    def validate(self) -> None:
        _require(self.system_metrics_interval > 0, "mlflow.system_metrics_interval", "> 0 (seconds)", self.system_metrics_interval)


@dataclass
class Config:
    loss: LossConfig = MISSING
    model: ModelConfig = MISSING
    data: Any = MISSING  # DigitsDataConfig or CocoDataConfig, by the group's choice
    pretrain: Any = MISSING  # PretrainConfig, CheckpointPretrainConfig or DigitsPretrainConfig, by the group's choice
    train: TrainConfig = MISSING
    paths: PathsConfig = MISSING
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    checkpoint_dir: str = MISSING  # last.pt is written here each epoch and resumed from


def register() -> None:
    """Make the schemas known to Hydra (the group files name them in their defaults lists)."""
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    store.store(group="loss", name="schema", node=LossConfig)
    for group, schemas in (("loss/cls", CLASSIFICATION_LOSSES), ("loss/reg", REGRESSION_LOSSES)):
        for schema in schemas:
            store.store(group=group, name=f"{_label(schema)}_schema", node=schema)
    store.store(group="model", name="schema", node=ModelConfig)
    store.store(group="data", name="digits_schema", node=DigitsDataConfig)
    store.store(group="data", name="coco_schema", node=CocoDataConfig)
    store.store(group="pretrain", name="none_schema", node=PretrainConfig)
    store.store(group="pretrain", name="checkpoint_schema", node=CheckpointPretrainConfig)
    store.store(group="pretrain", name="digits_schema", node=DigitsPretrainConfig)
    store.store(group="train", name="schema", node=TrainConfig)
    store.store(group="paths", name="schema", node=PathsConfig)


@dataclass(frozen=True)
class RunConfig:
    """A validated run: typed sections, plus the composed config for logging."""

    loss: LossConfig
    model: ModelConfig
    data: DigitsDataConfig | CocoDataConfig
    pretrain: PretrainConfig
    train: TrainConfig
    paths: PathsConfig
    mlflow: MlflowConfig
    seed: int
    device: str
    raw: DictConfig


def validate(cfg: DictConfig) -> RunConfig:
    """Check every value and build the losses once, so a bad config fails before any work."""
    sections = {key: OmegaConf.to_object(cfg[key]) for key in ("loss", "model", "data", "pretrain", "train", "paths", "mlflow")}
    if not isinstance(sections["data"], DigitsDataConfig | CocoDataConfig):
        raise ConfigError(f"data must be a config of the 'data' group (digits or coco), got {type(sections['data']).__name__}")
    if not isinstance(sections["pretrain"], PretrainConfig):
        raise ConfigError(f"pretrain must be a config of the 'pretrain' group (digits, imagenet or none), "
                          f"got {type(sections['pretrain']).__name__}")
    for key in ("model", "data", "pretrain", "train", "mlflow"):
        sections[key].validate()
    if sections["model"].ghm_scope == "official":
        _require(sections["train"].batch_size % sections["model"].ghm_group_images == 0, "train.batch_size",
                 f"a multiple of model.ghm_group_images ({sections['model'].ghm_group_images}: model.ghm_scope=official cuts "
                 "each step's images into groups of that size)", sections["train"].batch_size)
    if isinstance(sections["pretrain"], DigitsPretrainConfig):
        _require(isinstance(sections["data"], DigitsDataConfig) and sections["model"].backbone == "tiny", "pretrain",
                 "imagenet (with pretrain.weights) or none unless data=digits and the tiny backbone (pretrain=digits trains "
                 "the tiny backbone on Digits-Det crops)",
                 f"digits with data={sections['data'].name} and model.backbone={sections['model'].backbone}")
    _require(cfg.device == "auto" or cfg.device == "cpu" or str(cfg.device).startswith("cuda"), "device",
             "auto, cpu, cuda or cuda:N", cfg.device)
    for key, kinds, group in (("cls", CLASSIFICATION_LOSSES, "classification"), ("reg", REGRESSION_LOSSES, "regression")):
        _check_loss(f"loss.{key}", getattr(sections["loss"], key), kinds, group)
        settings = {f.name for f in dataclasses.fields(getattr(sections["loss"], key))}
        unknown = sorted(set(cfg.loss[key]) - settings)
        if unknown:
            raise ConfigError(f"loss.{key}: {cfg.loss[key].name} has no setting {', '.join(map(repr, unknown))}; allowed: "
                              f"{', '.join(sorted(settings - {'_target_', 'name'}))}")
        try:
            instantiate_labelled(cfg.loss[key])
        except Exception as err:  # instantiate wraps the class's ValueError in its own error, with the message
            raise ConfigError(f"loss.{key}: {_cause(err)}") from err
    return RunConfig(seed=cfg.seed, device=cfg.device, raw=cfg, **sections)


def _check_loss(key: str, loss: object, kinds: tuple[type, ...], group: str) -> None:
    labels = ", ".join(sorted(_label(kind) for kind in kinds))
    if not isinstance(loss, kinds):
        raise ConfigError(f"{key} must be a {group} loss ({labels}), got {type(loss).__name__}")
    _require(loss.name == _label(type(loss)), f"{key}.name", f"{_label(type(loss))!r}, the label of its config "
             f"(another {group} loss is chosen with {key.replace('.', '/')}=<{labels.replace(', ', '|')}>)", loss.name)


def _label(schema: type) -> str:
    """The ``name`` a loss config's schema gives it (its file is ``conf/loss/<cls|reg>/<name>.yaml``)."""
    return next(f.default for f in dataclasses.fields(schema) if f.name == "name")


def _cause(err: BaseException) -> str:
    """The innermost message of an exception chain: what the constructor itself said."""
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err)


def instantiate_labelled(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` a loss or dataset node: its ``name`` labels the choice for tracking, it is no argument."""
    arguments = OmegaConf.to_container(node, resolve=True)
    arguments.pop("name")
    return instantiate(arguments, **kwargs)
